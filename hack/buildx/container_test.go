package buildx

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestContainerRotation runs the GitHub Actions guide's local cache
// workflow (docs.docker.com, build/ci/github-actions/cache, "Local cache")
// as setup-buildx-action and build-push-action run it, with our buildx:
// each job a new docker-container builder on our root image, then
//
//	--cache-from type=local,src=DIR,lazy=true
//	--cache-to type=local,dest=DIR-new,mode=max
//	rm -rf DIR && mv DIR-new DIR
//
// The builder is checked as the README's recipe checks it (buildx inspect
// prints our BuildKit version). Job 1 finds no DIR. Job 2 finds every step
// cached, extracts nothing, and its DIR-new is complete, its layers hard links of DIR's: the client
// placed them, through the driver's docker exec, and the daemon sent none.
// After the rotation DIR is complete.
func TestContainerRotation(t *testing.T) {
	tl := requireTools(t)
	dk := startDocker(t, tl)
	work := t.TempDir()
	writeFiles(t, work, map[string]string{"ctx/Dockerfile": cachedDockerfile}, "ctx")
	ctxDir := filepath.Join(work, "ctx")
	dir := filepath.Join(work, "buildx-cache")

	job := func(t *testing.T) result {
		b := &builder{tl: tl, dockerConfig: t.TempDir(), env: []string{"DOCKER_HOST=" + dk.host}}
		b.tl.buildx = tl.oursBuildx
		res := b.run(t, "", "create", "--name", builderName, "--driver", "docker-container",
			"--driver-opt", "image="+dk.image, "--driver-opt", "network=host", "--bootstrap")
		require.NoError(t, res.err, "buildx create:\n%s", res.stderr)
		defer func() {
			if res := b.run(t, "", "rm", builderName); res.err != nil {
				t.Errorf("buildx rm: %v\n%s", res.err, res.stderr)
			}
		}()
		// The README's verify step: the builder runs our buildkitd.
		res = b.run(t, "", "inspect", builderName)
		require.NoError(t, res.err, "buildx inspect:\n%s", res.stderr)
		require.Regexp(t, `(?m)^BuildKit version:\s+v0\.34\.2\+lazylocal\.`, res.stdout, "buildx inspect")
		res = b.run(t, work, "build", "--progress=plain", "--output", "type=cacheonly",
			"--cache-from", "type=local,src="+dir+",lazy=true",
			"--cache-to", "type=local,dest="+dir+"-new,mode=max", ctxDir)
		require.NoError(t, res.err, "buildx build:\n%s", res.stderr)
		return res
	}
	rotate := func(t *testing.T) {
		require.NoError(t, os.RemoveAll(dir))
		require.NoError(t, os.Rename(dir+"-new", dir))
	}

	job(t)
	rotate(t)
	layers := requireCompleteCache(t, dir)
	require.Len(t, layers, 3, "layers of job 1's cache")

	res := job(t)
	require.Equal(t, 3, cachedSteps(res.stderr), "steps reported CACHED:\n%s", res.stderr)
	require.Empty(t, extracted(res.stderr), "extracted layers:\n%s", res.stderr)
	require.ElementsMatch(t, layers, requireCompleteCache(t, dir+"-new"), "layers of job 2's DIR-new")
	for _, l := range layers {
		require.True(t, sameFile(t, blobPath(dir, l), blobPath(dir+"-new", l)), "layer %s of DIR-new is not a link of DIR's", l)
	}
	rotate(t)
	require.ElementsMatch(t, layers, requireCompleteCache(t, dir), "layers of the rotated cache")
}

// dockerEngine is a dockerd of the test's own (its own data root, exec
// root, socket; no bridge, no iptables: containers use the host's
// network), with our root image loaded.
type dockerEngine struct {
	host  string
	image string
}

func startDocker(t *testing.T, tl tools) *dockerEngine {
	t.Helper()
	var missing []string
	for _, p := range []string{"docker", "dockerd"} {
		if _, err := exec.LookPath(p); err != nil {
			missing = append(missing, p+": install Debian's docker.io (hack/install-deps image)")
		}
	}
	tarball, err := filepath.Abs(filepath.Join("..", "..", "dist", "image", "buildkit.tar"))
	require.NoError(t, err)
	if _, err := os.Stat(tarball); err != nil {
		missing = append(missing, tarball+": run make image")
	}
	if len(missing) > 0 {
		t.Fatalf("missing requirements:\n  %s", strings.Join(missing, "\n  "))
	}
	// A short path: containerd's sockets under the exec root must stay
	// under 108 bytes.
	dir, err := os.MkdirTemp("", "buildx-docker-")
	require.NoError(t, err)
	t.Cleanup(func() {
		unmountUnder(dir)
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("remove %s: %v", dir, err)
		}
	})
	dk := &dockerEngine{host: "unix://" + filepath.Join(dir, "docker.sock")}
	args := []string{"--data-root", filepath.Join(dir, "data"), "--exec-root", filepath.Join(dir, "exec"),
		"--host", dk.host, "--pidfile", filepath.Join(dir, "docker.pid"),
		"--bridge=none", "--iptables=false", "--ip-masq=false"}
	if lacksSysResource() {
		self, err := os.Executable()
		require.NoError(t, err)
		wrapper := filepath.Join(dir, runtimeName)
		require.NoError(t, os.Symlink(self, wrapper))
		args = append(args, "--add-runtime", runtimeName+"="+wrapper, "--default-runtime", runtimeName)
	}
	logPath := filepath.Join(dir, "dockerd.log")
	logf, err := os.Create(logPath)
	require.NoError(t, err)
	defer logf.Close()
	cmd := exec.Command("dockerd", args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	require.NoError(t, cmd.Start())
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		if out, err := dk.run("ps", "-aq"); err == nil && len(strings.Fields(out)) > 0 {
			_, _ = dk.run(append([]string{"rm", "-f", "-v"}, strings.Fields(out)...)...)
		}
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(daemonStopTimeout):
			t.Errorf("dockerd (pid %d) did not exit within %s of SIGTERM; killing it", cmd.Process.Pid, daemonStopTimeout)
			_ = cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			dt, _ := os.ReadFile(logPath)
			t.Logf("dockerd log:\n%s", dt[max(0, len(dt)-8<<10):])
		}
	})
	for deadline := time.Now().Add(daemonStartTimeout); ; time.Sleep(200 * time.Millisecond) {
		select {
		case <-exited:
			dt, _ := os.ReadFile(logPath)
			t.Fatalf("dockerd exited while starting:\n%s", dt)
		default:
		}
		if _, err := dk.run("version"); err == nil {
			break
		}
		require.True(t, time.Now().Before(deadline), "dockerd did not answer within %s", daemonStartTimeout)
	}

	out := dk.docker(t, "load", "-i", tarball)
	m := regexp.MustCompile(`(?m)^Loaded image: (`+regexp.QuoteMeta(imageName())+`:\S+)$`).FindAllStringSubmatch(out, -1)
	require.NotEmpty(t, m, "docker load %s:\n%s", tarball, out)
	for _, l := range m {
		if !strings.HasSuffix(l[1], ":latest") {
			dk.image = l[1]
		}
	}
	require.NotEmpty(t, dk.image, "a tagged image in %s:\n%s", tarball, out)
	want, err := exec.Command(tl.buildkitd, "--version").Output()
	require.NoError(t, err)
	version := strings.TrimSpace(dk.docker(t, "image", "inspect", "--format", `{{index .Config.Labels "org.opencontainers.image.version"}}`, dk.image))
	require.Contains(t, string(want), " "+version+" ", "%s carries buildkitd %s, not bin/buildkitd's: run make image", dk.image, version)
	return dk
}

// run runs the docker CLI against the engine.
func (dk *dockerEngine) run(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "docker", args...)
	cmd.Env = append(os.Environ(), "DOCKER_HOST="+dk.host)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

func (dk *dockerEngine) docker(t *testing.T, args ...string) string {
	t.Helper()
	out, err := dk.run(args...)
	require.NoError(t, err, "docker %s:\n%s", strings.Join(args, " "), out)
	return out
}

// unmountUnder detaches what a dockerd left mounted under dir, deepest
// first.
func unmountUnder(dir string) {
	dt, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return
	}
	var mounts []string
	for line := range strings.Lines(string(dt)) {
		if f := strings.Fields(line); len(f) > 4 && strings.HasPrefix(f[4], dir+"/") {
			mounts = append(mounts, f[4])
		}
	}
	sort.Sort(sort.Reverse(sort.StringSlice(mounts)))
	for _, m := range mounts {
		_ = syscall.Unmount(m, syscall.MNT_DETACH)
	}
}

// imageName is the name hack/make-image gives the images: IMAGE_NAME, by
// default localhost/buildkit-lazylocal.
func imageName() string {
	if n := os.Getenv("IMAGE_NAME"); n != "" {
		return n
	}
	return "localhost/buildkit-lazylocal"
}
