package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/lazylocal/buildkit/hack/bench/scenario"
	"github.com/pkg/errors"
)

// The rootless row runs build 2 as the report does: docker run of our
// rootless image (make image), buildctl-daemonless.sh as the entrypoint,
// the report's security options, the context and the cache directory
// mounted. For the baseline's and upstream's daemons the image is the same
// and their static buildkitd and buildctl are mounted in and named by
// BUILDKITD and BUILDCTL, so that only the daemon differs.

// rootlessUID is the rootless image's user.
const rootlessUID = 1000

// rootlessPath is the image's PATH with the probe's shims first.
const rootlessPath = "/probe/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

func (b *unpackBench) startDocker(ctx context.Context) error {
	tarball := filepath.Join(b.opts.Repo, "dist", "image", "buildkit-rootless.tar")
	if _, err := os.Stat(tarball); err != nil {
		return errors.Errorf("-unpack rootless needs our rootless image: no %s: run make image", tarball)
	}
	outb, err := exec.Command(filepath.Join(b.opts.Repo, "bin", "buildkitd"), "--version").Output()
	if err != nil {
		return errors.Wrap(err, "bin/buildkitd --version")
	}
	f := strings.Fields(string(outb))
	if len(f) < 3 {
		return errors.Errorf("bin/buildkitd --version: unexpected %q", outb)
	}
	version := f[2]
	// dockerd's exec root must be short (containerd's socket paths)
	dir, err := os.MkdirTemp("", "lzb-")
	if err != nil {
		return errors.WithStack(err)
	}
	b.s.Logf("rootless row: starting a dockerd of our own in %s", dir)
	if b.docker, err = scenario.StartDockerd(ctx, dir); err != nil {
		return err
	}
	if _, err := b.docker.Docker(ctx, "load", "-i", tarball); err != nil {
		return err
	}
	b.image = imageName() + ":" + strings.ReplaceAll(version, "+", "-") + "-rootless"
	got, err := b.docker.Docker(ctx, "image", "inspect", "--format", `{{index .Config.Labels "org.opencontainers.image.version"}}`, b.image)
	if err != nil {
		return errors.Wrapf(err, "%s is not in %s (made from another bin/buildkitd?): run make image", b.image, tarball)
	}
	if strings.TrimSpace(got) != version {
		return errors.Errorf("%s is labelled %q, bin/buildkitd is %q: run make image", b.image, strings.TrimSpace(got), version)
	}
	// the decompressors the image has get shims; containerd would find a
	// shim of one it lacks and fail to run it
	out, err := b.docker.Docker(ctx, "run", "--rm", "--entrypoint", "sh", b.image, "-c", "for t in igzip unpigz; do command -v $t || :; done")
	if err != nil {
		return err
	}
	b.imageDecomp = map[string]string{}
	for _, p := range strings.Fields(out) {
		b.imageDecomp[filepath.Base(p)] = p
	}
	if _, ok := b.imageDecomp[b.opts.Gunzip]; !ok && b.opts.Gunzip != "go" {
		return errors.Errorf("-gunzip %s: %s has no %s (it has %v): run make image", b.opts.Gunzip, b.image, b.opts.Gunzip, b.imageDecomp)
	}
	return nil
}

// runRootless runs build 2 in the rootless image.
func (b *unpackBench) runRootless(ctx context.Context, p *project, col unpackCol, runDir, cacheDir, decomp, logPath string, lazy bool) (scenario.Result, error) {
	probe := filepath.Join(runDir, "probe")
	if err := os.MkdirAll(filepath.Join(probe, "bin"), 0o755); err != nil {
		return scenario.Result{}, errors.WithStack(err)
	}
	if err := scenario.WriteDecompressorShims(filepath.Join(probe, "bin"), b.imageDecomp); err != nil {
		return scenario.Result{}, err
	}
	if err := os.WriteFile(filepath.Join(probe, "buildctl-timed"), []byte(scenario.BuildctlShim()), 0o755); err != nil {
		return scenario.Result{}, errors.WithStack(err)
	}
	if err := os.Rename(decomp, filepath.Join(probe, "decompressors")); err != nil {
		return scenario.Result{}, errors.WithStack(err)
	}
	for _, d := range []string{probe, cacheDir} {
		if err := chownTree(d, rootlessUID); err != nil {
			return scenario.Result{}, err
		}
	}
	buildkitd, buildctl := "/usr/bin/buildkitd", "/usr/bin/buildctl"
	args := []string{"--rm", "--network", "host"}
	for _, o := range []string{"seccomp=unconfined", "apparmor=unconfined", "systempaths=unconfined"} {
		args = append(args, "--security-opt", o)
	}
	args = append(args,
		"-v", p.dir+":/workspace:ro",
		"-v", cacheDir+":/cache:rw",
		"-v", b.s.Config+":/home/user/.config/buildkit/buildkitd.toml:ro",
		"-v", probe+":/probe")
	if col.D.Name != "ours" {
		args = append(args, "-v", col.D.Dir+":/opt/daemon:ro")
		buildkitd, buildctl = "/opt/daemon/buildkitd", "/opt/daemon/buildctl"
	}
	env := []string{"BUILDKITD=" + buildkitd, "BUILDCTL=/probe/buildctl-timed",
		"SCENARIO_BUILDCTL=" + buildctl, "SCENARIO_TIMES=/probe/times",
		"SCENARIO_DECOMPRESSORS=/probe/decompressors", "PATH=" + rootlessPath}
	for _, kv := range b.env {
		if !strings.HasPrefix(kv, "PATH=") {
			env = append(env, kv)
		}
	}
	for _, kv := range env {
		args = append(args, "-e", kv)
	}
	imp := "--import-cache=type=local,src=/cache"
	if lazy {
		imp += ",lazy=true"
	}
	args = append(args, "--entrypoint", "buildctl-daemonless.sh", b.image,
		"build", "--frontend=dockerfile.v0", "--progress=rawjson",
		"--local=context=/workspace", "--local=dockerfile=/workspace",
		"--export-cache=type=local,dest=/cache,mode=max", imp)
	res, err := b.docker.RunBuild(ctx, scenario.Run{Args: args, Log: logPath, Times: filepath.Join(probe, "times")})
	if err != nil {
		return res, err
	}
	// the records are read from where runOne looks for them
	return res, errors.WithStack(os.Rename(filepath.Join(probe, "decompressors"), decomp))
}

func chownTree(dir string, uid int) error {
	return errors.WithStack(filepath.Walk(dir, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, uid, uid)
	}))
}

// imageName is the name hack/make-image gives the images: IMAGE_NAME, by
// default localhost/buildkit-lazylocal.
func imageName() string {
	if n := os.Getenv("IMAGE_NAME"); n != "" {
		return n
	}
	return "localhost/buildkit-lazylocal"
}
