package image

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pkg/errors"
)

const (
	startTimeout = 60 * time.Second
	stopTimeout  = 60 * time.Second
)

// env is what the tests share: one dockerd with our images loaded, and a
// loopback registry that holds a stand-in node:20, which buildkitd finds
// through mirrorConfig, a buildkitd.toml that mirrors docker.io to it.
type env struct {
	tl            tools
	dir           string
	dockerHost    string
	dockerConfig  string
	registry      string
	mirrorConfig  string
	version       string
	rootImage     string
	rootlessImage string
}

var (
	sharedOnce sync.Once
	shared     *env
	sharedErr  error
	// stops are run by stopShared, last first.
	stops []func()
)

// requireEnv sets up the shared environment on first use, or fails the test
// with why it could not.
func requireEnv(t *testing.T) *env {
	t.Helper()
	tl := requireTools(t)
	sharedOnce.Do(func() {
		start := time.Now()
		shared, sharedErr = setup(tl)
		if sharedErr == nil {
			t.Logf("dockerd, registry, images loaded: %.1fs", time.Since(start).Seconds())
			out, _ := shared.docker(context.Background(), "image", "ls", "--format", "{{.Repository}}:{{.Tag}} {{.Size}}", imageName())
			t.Logf("images:\n%s", out)
		}
	})
	if sharedErr != nil {
		t.Fatalf("setting up dockerd and registry: %v", sharedErr)
	}
	return shared
}

func stopShared() {
	for i := len(stops) - 1; i >= 0; i-- {
		stops[i]()
	}
	stops = nil
}

func setup(tl tools) (*env, error) {
	// A short directory: containerd's socket paths under dockerd's exec
	// root must stay under 108 bytes.
	dir, err := os.MkdirTemp("", "image-test-")
	if err != nil {
		return nil, err
	}
	stops = append(stops, func() {
		unmountUnder(dir)
		if err := os.RemoveAll(dir); err != nil {
			fmt.Fprintf(os.Stderr, "image tests: could not remove %s: %v\n", dir, err)
		}
	})
	e := &env{tl: tl, dir: dir, dockerConfig: filepath.Join(dir, "docker-config")}
	if err := os.Mkdir(e.dockerConfig, 0o700); err != nil {
		return nil, err
	}
	if e.version, err = buildkitdVersion(tl.buildkitd); err != nil {
		return nil, err
	}
	tag := strings.ReplaceAll(e.version, "+", "-")
	e.rootImage = imageName() + ":" + tag
	e.rootlessImage = imageName() + ":" + tag + "-rootless"

	if err := e.startRegistry(); err != nil {
		return nil, err
	}
	if err := e.startDockerd(); err != nil {
		return nil, err
	}
	for _, tarball := range []string{tl.rootTar, tl.rootlessTar} {
		if _, err := e.docker(context.Background(), "load", "-i", tarball); err != nil {
			return nil, err
		}
	}
	for _, img := range []string{e.rootImage, e.rootlessImage} {
		out, err := e.docker(context.Background(), "image", "inspect", "--format", `{{index .Config.Labels "org.opencontainers.image.version"}}`, img)
		if err != nil {
			return nil, errors.Wrapf(err, "%s is not in dist/image (built from another bin/buildkitd?): run make image", img)
		}
		if got := strings.TrimSpace(out); got != e.version {
			return nil, errors.Errorf("%s is labelled version %q, want %q: run make image", img, got, e.version)
		}
	}
	if err := e.pushNode(); err != nil {
		return nil, err
	}
	e.mirrorConfig = filepath.Join(dir, "buildkitd.toml")
	toml := fmt.Sprintf("[registry.\"docker.io\"]\n  mirrors = [%q]\n[registry.%q]\n  http = true\n", e.registry, e.registry)
	if err := os.WriteFile(e.mirrorConfig, []byte(toml), 0o644); err != nil {
		return nil, err
	}
	return e, nil
}

func buildkitdVersion(buildkitd string) (string, error) {
	out, err := exec.Command(buildkitd, "--version").Output()
	if err != nil {
		return "", errors.Wrapf(err, "%s --version", buildkitd)
	}
	// buildkitd github.com/moby/buildkit v0.34.2+lazylocal.21 3edb3a9
	f := strings.Fields(string(out))
	if len(f) < 3 {
		return "", errors.Errorf("%s --version: unexpected output %q", buildkitd, out)
	}
	return f[2], nil
}

// process is a daemon the tests started; stop ends it with SIGTERM, then
// SIGKILL if it does not exit in time.
type process struct {
	name   string
	cmd    *exec.Cmd
	log    string
	exited chan struct{}
}

func startProcess(name, log string, args ...string) (*process, error) {
	logf, err := os.Create(log)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	p := &process{name: name, log: log, cmd: exec.Command(args[0], args[1:]...), exited: make(chan struct{})}
	p.cmd.Stdout, p.cmd.Stderr = logf, logf
	// If the test binary dies (a -timeout panic skips TestMain's cleanup),
	// the daemon goes with it instead of lingering.
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err := p.cmd.Start(); err != nil {
		return nil, errors.Wrapf(err, "start %s", name)
	}
	go func() {
		_ = p.cmd.Wait()
		close(p.exited)
	}()
	stops = append(stops, p.stop)
	return p, nil
}

func (p *process) stop() {
	select {
	case <-p.exited:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(stopTimeout):
		fmt.Fprintf(os.Stderr, "image tests: %s (pid %d) did not exit within %s of SIGTERM; killing it\n", p.name, p.cmd.Process.Pid, stopTimeout)
		_ = p.cmd.Process.Kill()
		<-p.exited
	}
}

// waitReady polls ready until it succeeds, the process exits or
// startTimeout passes.
func (p *process) waitReady(ready func() error) error {
	deadline := time.Now().Add(startTimeout)
	for {
		err := ready()
		if err == nil {
			return nil
		}
		select {
		case <-p.exited:
			return errors.Errorf("%s exited while starting (%v); its log:\n%s", p.name, p.cmd.ProcessState, tail(p.log))
		default:
		}
		if time.Now().After(deadline) {
			return errors.Wrapf(err, "%s did not answer within %s; its log:\n%s", p.name, startTimeout, tail(p.log))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func tail(path string) string {
	dt, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	const n = 8 << 10
	if len(dt) > n {
		dt = dt[len(dt)-n:]
	}
	return string(dt)
}

func freePort() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

func (e *env) startRegistry() error {
	addr, err := freePort()
	if err != nil {
		return err
	}
	config := filepath.Join(e.dir, "registry.yml")
	yml := fmt.Sprintf("version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: %s\n", filepath.Join(e.dir, "registry"), addr)
	if err := os.WriteFile(config, []byte(yml), 0o644); err != nil {
		return err
	}
	p, err := startProcess("docker-registry", filepath.Join(e.dir, "registry.log"), e.tl.registry, "serve", config)
	if err != nil {
		return err
	}
	e.registry = addr
	return p.waitReady(func() error {
		resp, err := http.Get("http://" + addr + "/v2/")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return errors.Errorf("registry: GET /v2/: %s", resp.Status)
		}
		return nil
	})
}

// startDockerd starts a dockerd of the tests' own: its own data root, exec
// root, socket and pid file, no bridge and no iptables rules (containers
// run with --network host).
func (e *env) startDockerd() error {
	sock := filepath.Join(e.dir, "docker.sock")
	config := filepath.Join(e.dir, "daemon.json")
	if err := os.WriteFile(config, []byte("{}\n"), 0o644); err != nil {
		return err
	}
	args := []string{e.tl.dockerd,
		"--config-file", config,
		"--data-root", filepath.Join(e.dir, "data"),
		"--exec-root", filepath.Join(e.dir, "exec"),
		"--host", "unix://" + sock,
		"--pidfile", filepath.Join(e.dir, "docker.pid"),
		"--bridge=none", "--iptables=false", "--ip-masq=false",
	}
	if needRuntimeWrapper() {
		self, err := os.Executable()
		if err != nil {
			return err
		}
		wrapper := filepath.Join(e.dir, runtimeName)
		if err := os.Symlink(self, wrapper); err != nil {
			return err
		}
		args = append(args, "--add-runtime", runtimeName+"="+wrapper, "--default-runtime", runtimeName)
	}
	p, err := startProcess("dockerd", filepath.Join(e.dir, "dockerd.log"), args...)
	if err != nil {
		return err
	}
	e.dockerHost = "unix://" + sock
	// Before dockerd stops: remove every container, so that none is left
	// behind if dockerd is slow to stop them.
	stops = append(stops, func() {
		ctx, cancel := context.WithTimeout(context.Background(), stopTimeout)
		defer cancel()
		out, _ := e.docker(ctx, "ps", "-aq")
		if ids := strings.Fields(out); len(ids) > 0 {
			_, _ = e.docker(ctx, append([]string{"rm", "-f", "-v"}, ids...)...)
		}
	})
	return p.waitReady(func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err := e.docker(ctx, "version")
		return err
	})
}

// dockerEnv is the environment of docker and buildx commands: ours, less
// every Docker, buildx and BuildKit setting of the caller's.
func (e *env) dockerEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); strings.HasPrefix(k, "DOCKER_") || strings.HasPrefix(k, "BUILDX_") || strings.HasPrefix(k, "BUILDKIT_") {
			continue
		}
		env = append(env, kv)
	}
	return append(env, "DOCKER_HOST="+e.dockerHost, "DOCKER_CONFIG="+e.dockerConfig, "NO_COLOR=1")
}

// docker runs the docker CLI against our dockerd and returns its stdout; an
// error carries its stderr.
func (e *env) docker(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, e.tl.docker, args...)
	cmd.Env = e.dockerEnv()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), errors.Wrapf(err, "docker %s: %s", strings.Join(args, " "), stderr.String())
	}
	return stdout.String(), nil
}

// pushNode makes the stand-in node:20, BusyBox and 4 MB of random data in
// one layer, and pushes it to the registry as library/node:20.
func (e *env) pushNode() error {
	tarball := filepath.Join(e.dir, "node.tar")
	if err := writeNodeRootfs(tarball); err != nil {
		return err
	}
	ref := e.registry + "/library/node:20"
	ctx := context.Background()
	if _, err := e.docker(ctx, "import", tarball, ref); err != nil {
		return err
	}
	_, err := e.docker(ctx, "push", ref)
	return err
}

func writeNodeRootfs(path string) error {
	busybox, err := os.ReadFile(busyboxPath)
	if err != nil {
		return err
	}
	data := make([]byte, 4<<20)
	if _, err := rand.Read(data); err != nil {
		return err
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	tw := tar.NewWriter(f)
	mtime := time.Unix(0, 0)
	for _, d := range []string{"bin", "etc", "tmp", "usr", "usr/local", "usr/local/lib"} {
		mode := int64(0o755)
		if d == "tmp" {
			mode = 0o1777
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d + "/", Mode: mode, ModTime: mtime}); err != nil {
			return err
		}
	}
	files := []struct {
		name string
		mode int64
		data []byte
	}{
		{"bin/busybox", 0o755, busybox},
		{"etc/passwd", 0o644, []byte("root:x:0:0:root:/root:/bin/sh\n")},
		{"usr/local/lib/node.bin", 0o644, data},
	}
	for _, file := range files {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: file.name, Mode: file.mode, Size: int64(len(file.data)), ModTime: mtime}); err != nil {
			return err
		}
		if _, err := tw.Write(file.data); err != nil {
			return err
		}
	}
	applets := []string{"sh", "cat", "cp", "echo", "head", "ls", "mkdir", "rm", "true"}
	sort.Strings(applets)
	for _, a := range applets {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: "bin/" + a, Linkname: "busybox", Mode: 0o777, ModTime: mtime}); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	return f.Close()
}

// unmountUnder detaches whatever is still mounted under dir (a dockerd
// that was killed leaves its overlays), deepest first.
func unmountUnder(dir string) {
	dt, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return
	}
	var mounts []string
	for line := range strings.Lines(string(dt)) {
		f := strings.Fields(line)
		if len(f) > 4 && strings.HasPrefix(f[4], dir+"/") {
			mounts = append(mounts, f[4])
		}
	}
	sort.Sort(sort.Reverse(sort.StringSlice(mounts)))
	for _, m := range mounts {
		if err := syscall.Unmount(m, 0); err != nil {
			_ = syscall.Unmount(m, syscall.MNT_DETACH)
		}
	}
}

// imageName is the name hack/make-image gives the images: IMAGE_NAME, by
// default localhost/buildkit-lazylocal, which no registry but this
// machine's own can answer for.
func imageName() string {
	if n := os.Getenv("IMAGE_NAME"); n != "" {
		return n
	}
	return "localhost/buildkit-lazylocal"
}
