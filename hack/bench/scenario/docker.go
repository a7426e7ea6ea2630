package scenario

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/pkg/errors"
)

// Dockerd is a dockerd this package started, with its own data root, exec
// root, socket and pid file, no bridge and no iptables rules: containers
// run with --network host and reach the loopback registry there.
type Dockerd struct {
	docker string
	dir    string
	host   string
	cmd    *exec.Cmd
	done   chan error
	log    string
}

// StartDockerd starts dockerd with everything under dir, which must be
// short: containerd's socket paths under the exec root must stay under
// 108 bytes.
func StartDockerd(ctx context.Context, dir string) (*Dockerd, error) {
	var missing []string
	paths := map[string]string{}
	for _, name := range []string{"dockerd", "docker"} {
		p, err := exec.LookPath(name)
		if err != nil {
			missing = append(missing, name)
		}
		paths[name] = p
	}
	if len(missing) > 0 {
		return nil, errors.Errorf("no %s in PATH: run hack/install-deps image (Debian's docker.io)", strings.Join(missing, ", "))
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, errors.WithStack(err)
	}
	d := &Dockerd{docker: paths["docker"], dir: dir, host: "unix://" + filepath.Join(dir, "docker.sock"), done: make(chan error, 1), log: filepath.Join(dir, "dockerd.log")}
	if err := os.WriteFile(filepath.Join(dir, "daemon.json"), []byte("{}\n"), 0o644); err != nil {
		return nil, errors.WithStack(err)
	}
	logf, err := os.Create(d.log)
	if err != nil {
		return nil, errors.WithStack(err)
	}
	defer logf.Close()
	d.cmd = exec.Command(paths["dockerd"],
		"--config-file", filepath.Join(dir, "daemon.json"),
		"--data-root", filepath.Join(dir, "data"),
		"--exec-root", filepath.Join(dir, "exec"),
		"--host", d.host,
		"--pidfile", filepath.Join(dir, "docker.pid"),
		"--bridge=none", "--iptables=false", "--ip-masq=false")
	d.cmd.Stdout, d.cmd.Stderr = logf, logf
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := d.cmd.Start(); err != nil {
		return nil, errors.Wrap(err, "failed to start dockerd")
	}
	go func() { d.done <- d.cmd.Wait() }()
	deadline := time.Now().Add(60 * time.Second)
	for {
		if _, err := d.Docker(ctx, "version"); err == nil {
			return d, nil
		}
		select {
		case err := <-d.done:
			d.done <- err
			return nil, errors.Errorf("dockerd exited (%v) while starting; log: %s", err, tail(d.log, 3000))
		case <-ctx.Done():
			d.Stop()
			return nil, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			d.Stop()
			return nil, errors.Errorf("dockerd did not answer within 60s; log: %s", tail(d.log, 3000))
		}
	}
}

func (d *Dockerd) env() []string {
	var env []string
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); strings.HasPrefix(k, "DOCKER_") || strings.HasPrefix(k, "BUILDKIT_") {
			continue
		}
		env = append(env, kv)
	}
	return append(env, "DOCKER_HOST="+d.host, "DOCKER_CONFIG="+filepath.Join(d.dir, "config"))
}

// Docker runs the docker CLI against this dockerd and returns its stdout;
// an error carries its stderr.
func (d *Dockerd) Docker(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, d.docker, args...)
	cmd.Env = d.env()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), errors.Wrapf(err, "docker %s: %s", strings.Join(args, " "), strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// Stop removes every container, ends dockerd, waits for it and removes
// its directory.
func (d *Dockerd) Stop() {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if out, err := d.Docker(ctx, "ps", "-aq"); err == nil {
		if ids := strings.Fields(out); len(ids) > 0 {
			_, _ = d.Docker(ctx, append([]string{"rm", "-f", "-v"}, ids...)...)
		}
	}
	stopGroup(d.cmd, d.done, 60*time.Second)
	_ = RemoveAll(d.dir)
}

// Run is one docker run.
type Run struct {
	// Args are docker run's arguments after "run" (flags, image,
	// command); --cidfile is added.
	Args []string
	// Log receives everything docker run prints.
	Log string
	// Times is the host path of the file the BUILDCTL shim (see
	// Daemonless) writes its timing to from inside the container.
	Times string
}

// RunBuild runs a container whose command is a daemonless build and
// measures it as Daemonless.Build does: the wall time of docker run, the
// build's own time from the BUILDCTL shim, and the buildkitd it starts,
// found among the container's processes and sampled from the host's /proc.
func (d *Dockerd) RunBuild(ctx context.Context, r Run) (Result, error) {
	cidfile := filepath.Join(d.dir, "cid-"+strconv.FormatInt(time.Now().UnixNano(), 36))
	defer os.Remove(cidfile)
	logf, err := os.Create(r.Log)
	if err != nil {
		return Result{}, errors.WithStack(err)
	}
	defer logf.Close()
	cmd := exec.CommandContext(ctx, d.docker, append([]string{"run", "--cidfile", cidfile}, r.Args...)...)
	cmd.Env = d.env()
	cmd.Stdout, cmd.Stderr = logf, logf
	var initPid int
	w := watchProcess(func() int {
		if initPid == 0 {
			initPid = d.containerPid(ctx, cidfile)
			if initPid == 0 {
				return 0
			}
		}
		return FindDescendant(initPid, "buildkitd")
	})
	start := time.Now()
	err = cmd.Run()
	res := Result{Total: time.Since(start), Log: r.Log}
	res.PeakRSS, res.Usage = w.Stop()
	if err != nil {
		return res, errors.Wrapf(err, "docker run failed; output: %s", tail(r.Log, 3000))
	}
	if res.Build, res.BuildStart, res.BuildEnd, err = buildSpan(r.Times); err != nil {
		return res, err
	}
	return res, nil
}

// containerPid is the host pid of the container's first process once
// docker run has written its id, 0 before.
func (d *Dockerd) containerPid(ctx context.Context, cidfile string) int {
	id, err := os.ReadFile(cidfile)
	if err != nil || len(bytes.TrimSpace(id)) == 0 {
		return 0
	}
	out, err := d.Docker(ctx, "inspect", "--format", "{{.State.Pid}}", string(bytes.TrimSpace(id)))
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(out))
	return pid
}

// BuildctlShim is the shim Daemonless puts in front of buildctl, for a
// container to run: it times the build and writes the timing to
// $SCENARIO_TIMES, running $SCENARIO_BUILDCTL.
func BuildctlShim() string { return shim }
