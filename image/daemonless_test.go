package image

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// imageVariant is one of our images as a user runs buildctl-daemonless.sh
// in it: the rootless image with the report's security options and its
// buildkitd.toml in the user's config directory; the root image privileged,
// as upstream's README runs moby/buildkit, its buildkitd.toml in /etc.
type imageVariant struct {
	name     string
	image    string
	rootless bool
}

func (e *env) variants() []imageVariant {
	return []imageVariant{
		{name: "root", image: e.rootImage},
		{name: "rootless", image: e.rootlessImage, rootless: true},
	}
}

// runOpts are what a docker run of buildctl-daemonless.sh adds to the
// variant's flags.
type runOpts struct {
	// volumes are docker run -v values.
	volumes []string
	// env are docker run -e values.
	env []string
	// platform is docker run --platform, "" for this machine's.
	platform string
	// asRoot runs the rootless image as root (--user 0:0, privileged, as
	// the root image runs): the wrapper then starts buildkitd without
	// RootlessKit.
	asRoot bool
}

// daemonless runs buildctl-daemonless.sh ARGS... in a container of v's
// image, on the host's network (our registry and git daemon listen on
// 127.0.0.1), and returns everything it printed.
func (e *env) daemonless(t *testing.T, v imageVariant, o runOpts, args ...string) (string, error) {
	t.Helper()
	run := []string{"run", "--rm", "--network", "host"}
	if o.platform != "" {
		run = append(run, "--platform", o.platform)
	}
	switch {
	case v.rootless && o.asRoot:
		run = append(run, "--user", "0:0", "--privileged",
			"-v", e.mirrorConfig+":/etc/buildkit/buildkitd.toml:ro")
	case v.rootless:
		for _, s := range reportSecurityOpts {
			run = append(run, "--security-opt", s)
		}
		run = append(run, "-v", e.mirrorConfig+":/home/user/.config/buildkit/buildkitd.toml:ro")
	default:
		// The wrapper keeps the daemon's state under TMPDIR: in the
		// image's volume, where overlayfs works, not on the container's
		// own overlay file system.
		run = append(run, "--privileged", "-e", "TMPDIR=/var/lib/buildkit",
			"-v", e.mirrorConfig+":/etc/buildkit/buildkitd.toml:ro")
	}
	for _, vol := range o.volumes {
		run = append(run, "-v", vol)
	}
	for _, kv := range o.env {
		run = append(run, "-e", kv)
	}
	run = append(run, "--entrypoint", "buildctl-daemonless.sh", v.image)
	run = append(run, args...)

	ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, e.tl.docker, run...)
	cmd.Env = e.dockerEnv()
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	err := cmd.Run()
	if ctx.Err() != nil {
		err = fmt.Errorf("docker run did not finish within %s: %w", buildTimeout, err)
	}
	t.Logf("buildctl-daemonless.sh %s in %s: %.2fs, %v", strings.Join(args, " "), v.image, time.Since(start).Seconds(), exitStatus(err))
	return out.String(), err
}

// buildArgs are the buildctl flags of a Dockerfile build whose result is
// written to /out in the container; more are the frontend's inputs.
func buildArgs(more ...string) []string {
	return append([]string{"build", "--progress=plain", "--frontend=dockerfile.v0", "--output=type=local,dest=/out"}, more...)
}

// requireFileContent fails unless path holds want.
func requireFileContent(t *testing.T, path, want, output string) {
	t.Helper()
	dt, err := os.ReadFile(path)
	require.NoError(t, err, "the build did not write %s; its output:\n%s", filepath.Base(path), output)
	require.Equal(t, want, string(dt), "%s", path)
}
