package image

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// imagePlatforms are the platforms make image builds every image for.
var imagePlatforms = []string{"linux/amd64", "linux/arm64"}

// qemuGoEnv is the environment of every arm64 command the tests run under
// emulation. Go programs hang now and then under Debian bookworm's
// qemu-user 7.2 when they run on several threads (golang/go#67355,
// #70329): arm64 buildkitd --version, run directly under qemu-aarch64 on
// this project's VM, hung in 7 of 60 runs by default, in none of 90 with
// GOMAXPROCS=1. Not needed on arm64 hardware.
var qemuGoEnv = []string{"GOMAXPROCS=1"}

// qemuAarch64 is Debian's qemu-user-static interpreter for arm64 as
// binfmt_misc lists it once registered.
const qemuAarch64 = "/proc/sys/fs/binfmt_misc/qemu-aarch64"

// requireArm64Emulation fails the test unless the kernel runs arm64
// programs with qemu-user, in containers too (binfmt_misc's fix-binary
// flag opens the interpreter when it is registered).
func requireArm64Emulation(t *testing.T) {
	t.Helper()
	dt, err := os.ReadFile(qemuAarch64)
	if err != nil {
		t.Fatalf("arm64 emulation: %v: run hack/install-deps image (it installs qemu-user-static, mounts binfmt_misc and registers qemu-aarch64)", err)
	}
	s := string(dt)
	if !strings.HasPrefix(s, "enabled") {
		t.Fatalf("arm64 emulation: %s is disabled: run hack/install-deps image", qemuAarch64)
	}
	for line := range strings.Lines(s) {
		if flags, ok := strings.CutPrefix(line, "flags: "); ok && strings.Contains(flags, "F") {
			return
		}
	}
	t.Fatalf("arm64 emulation: %s lacks the F (fix-binary) flag, without which containers cannot find the interpreter:\n%s", qemuAarch64, s)
}

// fullName is ref as containerd names it in an OCI layout: with docker.io/
// in front unless its first part names a registry (localhost, or a host
// with a dot or a port).
func fullName(ref string) string {
	if first, _, ok := strings.Cut(ref, "/"); ok && (first == "localhost" || strings.ContainsAny(first, ".:")) {
		return ref
	}
	return "docker.io/" + ref
}

// layoutImage is the descriptor of the image named ref in make image's OCI
// layout, and the index it must be.
func layoutImage(t *testing.T, layout, ref string) (descriptor, index) {
	t.Helper()
	idx, err := readLayoutIndex(layout)
	require.NoError(t, err, "run make image")
	var found []descriptor
	for _, d := range idx.Manifests {
		if d.Annotations["io.containerd.image.name"] == fullName(ref) {
			found = append(found, d)
		}
	}
	require.Len(t, found, 1, "%s in %s/index.json", ref, layout)
	d := found[0]
	require.Equal(t, mediaTypeOCIIndex, d.MediaType, "%s in %s: a single-platform image, not an index", ref, layout)
	data, err := readLayoutBlob(layout, d)
	require.NoError(t, err)
	var img index
	require.NoError(t, json.Unmarshal(data, &img))
	return d, img
}

// TestPlatforms checks that each image in make image's OCI layout is one
// index of linux/amd64 and linux/arm64, as upstream publishes moby/buildkit,
// then pushes both indexes to the loopback registry and runs the arm64
// images under qemu-user: docker pulls them by platform from the index.
func TestPlatforms(t *testing.T) {
	e := requireEnv(t)
	requireArm64Emulation(t)
	layout := repoFile("dist/image/oci")

	pulled := map[string]string{}
	for _, v := range e.variants() {
		d, img := layoutImage(t, layout, v.image)
		var platforms []string
		for _, m := range img.Manifests {
			// BuildKit lists attestation manifests as unknown/unknown.
			if m.Platform != nil && m.Platform.OS != "unknown" {
				platforms = append(platforms, m.Platform.String())
				data, err := readLayoutBlob(layout, m)
				require.NoError(t, err)
				var man manifest
				require.NoError(t, json.Unmarshal(data, &man))
				var size int64
				for _, l := range man.Layers {
					size += l.Size
				}
				t.Logf("%s %s: %d layers, %.1f MB compressed", v.image, m.Platform, len(man.Layers), float64(size)/1e6)
			}
		}
		require.ElementsMatch(t, imagePlatforms, platforms, "platforms of %s's index", v.image)

		_, tag, _ := strings.Cut(v.image, ":")
		require.NoError(t, e.pushLayoutImage(layout, d, "test/buildkit", tag))
		ref := e.registry + "/test/buildkit:" + tag
		ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
		out, err := e.docker(ctx, "pull", "--platform", "linux/arm64", ref)
		cancel()
		require.NoError(t, err, "%s", out)
		arch, err := e.docker(context.Background(), "image", "inspect", "--format", "{{.Os}}/{{.Architecture}}", ref)
		require.NoError(t, err)
		require.Equal(t, "linux/arm64", strings.TrimSpace(arch), "docker pull --platform linux/arm64 %s", ref)
		pulled[v.name] = ref
	}
	sizes, err := e.docker(context.Background(), "image", "ls", "--format", "{{.Repository}}:{{.Tag}} {{.Size}}", e.registry+"/test/buildkit")
	require.NoError(t, err)
	t.Logf("linux/arm64 images:\n%s", sizes)

	for _, v := range e.variants() {
		t.Run("arm64_"+v.name+"_versions", func(t *testing.T) {
			ref := pulled[v.name]
			for _, c := range []struct {
				cmd  []string
				want string
			}{
				// qemu-user reports the emulated machine
				{[]string{"uname", "-m"}, "aarch64\n"},
				{[]string{"buildkitd", "--version"}, "buildkitd github.com/moby/buildkit " + e.version + " "},
				{[]string{"buildctl", "--version"}, "buildctl github.com/moby/buildkit " + e.version + " "},
			} {
				ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
				run := []string{"run", "--rm", "--platform", "linux/arm64"}
				for _, kv := range qemuGoEnv {
					run = append(run, "-e", kv)
				}
				run = append(run, "--entrypoint", c.cmd[0], ref)
				out, err := e.docker(ctx, append(run, c.cmd[1:]...)...)
				cancel()
				require.NoError(t, err, "%s in %s", strings.Join(c.cmd, " "), ref)
				require.True(t, strings.HasPrefix(out, c.want), "%s in %s: got %q, want it to start with %q", strings.Join(c.cmd, " "), ref, out, c.want)
			}
		})
	}

	// RootlessKit cannot start under qemu-user: qemu rejects a fork with
	// namespace flags ("[rootlesskit:parent] error: failed to start the
	// child: fork/exec /proc/self/exe: invalid argument"). So the rootless
	// image's wrapper runs as root there, which starts buildkitd without
	// RootlessKit; the build has no RUN step, so runc is not run either.
	t.Run("arm64_rootless_daemonless_build", func(t *testing.T) {
		v := imageVariant{name: "rootless arm64", image: pulled["rootless"], rootless: true}
		const content = "built by the arm64 image\n"
		ctxDir, out := userDir(t), userDir(t)
		require.NoError(t, os.WriteFile(filepath.Join(ctxDir, "Dockerfile"), []byte("FROM scratch\nCOPY hello.txt /\n"), 0o644))
		require.NoError(t, os.WriteFile(filepath.Join(ctxDir, "hello.txt"), []byte(content), 0o644))
		output, err := e.daemonless(t, v, runOpts{
			platform: "linux/arm64",
			asRoot:   true,
			env:      qemuGoEnv,
			volumes:  []string{ctxDir + ":/workspace:ro", out + ":/out"},
		}, buildArgs("--local=context=/workspace", "--local=dockerfile=/workspace")...)
		require.NoError(t, err, "%s", output)
		requireFileContent(t, filepath.Join(out, "hello.txt"), content, output)
	})
}
