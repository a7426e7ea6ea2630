package image

import (
	"context"
	"regexp"
	"testing"

	"github.com/stretchr/testify/require"
)

var wrapperLineRe = regexp.MustCompile(`(?m)^buildctl-daemonless\.sh: .*$`)

// TestRootlessWithoutSecurityOpts runs the report's script on the rootless
// image without the security options it needs. Docker's default seccomp
// profile keeps RootlessKit from making a user namespace, and Docker's
// masked /proc keeps RUN steps from mounting proc: the wrapper must say, in
// one message, which options are missing, instead of a Go stack or a hang.
func TestRootlessWithoutSecurityOpts(t *testing.T) {
	e := requireEnv(t)
	for _, tc := range []struct {
		name string
		opts []string
		want string
	}{
		{
			name: "none",
			opts: nil,
			want: "RootlessKit could not start buildkitd: this container's seccomp profile does not let it make a user namespace; " +
				"run the container with --security-opt seccomp=unconfined --security-opt apparmor=unconfined " +
				"and --security-opt systempaths=unconfined (RUN steps mount /proc; or set BUILDKITD_FLAGS=--oci-worker-no-process-sandbox); " +
				"buildkitd's log follows",
		},
		{
			name: "no systempaths",
			opts: []string{"seccomp=unconfined", "apparmor=unconfined"},
			want: "/proc is masked in this container, so RUN steps fail to mount it; " +
				"run the container with --security-opt systempaths=unconfined (RUN steps mount /proc; or set BUILDKITD_FLAGS=--oci-worker-no-process-sandbox)",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctxDir := userDir(t)
			writeContext(t, ctxDir, reportDockerfile(""), "console.log(1)\n")
			r := e.runReport(t, ctxDir, userDir(t), true, tc.opts)
			require.Error(t, r.err, "output:\n%s", r.output)
			require.Equal(t, []string{"buildctl-daemonless.sh: " + tc.want}, wrapperLineRe.FindAllString(r.output, -1), "output:\n%s", r.output)
			require.NotContains(t, r.output, "goroutine ", "a Go stack:\n%s", r.output)
		})
	}
}

// TestRootlessSnapshotter checks that the rootless image's daemon keeps its
// state where it can use overlayfs (the image's volume, through TMPDIR),
// not on the container's own overlay file system, where it falls back to
// the native snapshotter, which copies every layer.
func TestRootlessSnapshotter(t *testing.T) {
	e := requireEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
	defer cancel()
	args := []string{"run", "--rm", "--network", "host"}
	for _, o := range reportSecurityOpts {
		args = append(args, "--security-opt", o)
	}
	args = append(args, "--entrypoint", "buildctl-daemonless.sh", e.rootlessImage, "debug", "workers", "--verbose")
	out, err := e.docker(ctx, args...)
	require.NoError(t, err)
	require.Regexp(t, `org\.mobyproject\.buildkit\.worker\.snapshotter:\s+overlayfs`, out)
}
