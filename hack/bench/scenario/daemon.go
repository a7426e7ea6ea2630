package scenario

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/lazylocal/buildkit/hack/remotetest/tlsfiles"
	"github.com/pkg/errors"
)

// WriteDaemonConfig writes a buildkitd.toml that lets the daemon pull from
// and push to the loopback registry over plain HTTP, turns garbage
// collection off so that it cannot start in the middle of a measurement,
// and turns series 05's parallel apply on, as our root image does (daemons
// without it, upstream's and the baseline, ignore the key).
func WriteDaemonConfig(path, registryAddr string) error {
	cfg := fmt.Sprintf(`# written by hack/bench/scenario
[registry.%q]
  http = true
  insecure = true

[worker.oci]
  gc = false
  parallel-unpack = true
`, registryAddr)
	return errors.Wrapf(os.WriteFile(path, []byte(cfg), 0o644), "failed to write %s", path)
}

// Daemon is a buildkitd this package started and talks to on its own
// socket: the internal starter for setup builds and the warm daemon that
// the benchmark uses as its floor.
type Daemon struct {
	Root string
	// Addr is unix://socket, or tcp://127.0.0.1:port for a daemon started
	// by StartTCPDaemon.
	Addr  string
	tls   *tlsfiles.Files
	tools Tools
	cmd   *exec.Cmd
	done  chan error
	log   string
}

// StartDaemon starts buildkitd with its state in root, its socket and log
// in runDir, and waits until it lists its workers.
func StartDaemon(ctx context.Context, tools Tools, root, config, runDir string) (*Daemon, error) {
	return startDaemon(ctx, tools, root, config, runDir, nil)
}

// StartTCPDaemon starts buildkitd as a remote builder runs: on a free TCP
// port of 127.0.0.1, with TLS and client certificates required (tls), and
// waits until it lists its workers.
func StartTCPDaemon(ctx context.Context, tools Tools, root, config, runDir string, tls tlsfiles.Files) (*Daemon, error) {
	return startDaemon(ctx, tools, root, config, runDir, &tls)
}

func startDaemon(ctx context.Context, tools Tools, root, config, runDir string, tls *tlsfiles.Files) (*Daemon, error) {
	if err := os.MkdirAll(root, 0o700); err != nil {
		return nil, errors.WithStack(err)
	}
	sock := filepath.Join(runDir, "buildkitd.sock")
	d := &Daemon{Root: root, Addr: "unix://" + sock, tls: tls, tools: tools, done: make(chan error, 1), log: filepath.Join(runDir, "buildkitd.log")}
	args := []string{"--root=" + root, "--config=" + config}
	if tls != nil {
		// Another process could take the port before the daemon does;
		// the daemon then fails to start and says so.
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		d.Addr = fmt.Sprintf("tcp://127.0.0.1:%d", port)
		args = append(args, "--tlscacert="+tls.CA, "--tlscert="+tls.ServerCert, "--tlskey="+tls.ServerKey,
			// its own OTEL socket: it has no unix socket to put it beside
			"--otel-socket-path="+filepath.Join(runDir, "otel.sock"))
	}
	logf, err := os.Create(d.log)
	if err != nil {
		return nil, errors.WithStack(err)
	}
	defer logf.Close()
	d.cmd = exec.Command(tools.Buildkitd, append(args, "--addr="+d.Addr)...)
	d.cmd.Stdout, d.cmd.Stderr = logf, logf
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := d.cmd.Start(); err != nil {
		return nil, errors.Wrapf(err, "failed to start %s", tools.Buildkitd)
	}
	go func() { d.done <- d.cmd.Wait() }()
	if err := d.wait(ctx); err != nil {
		d.Stop()
		return nil, err
	}
	return d, nil
}

func (d *Daemon) wait(ctx context.Context) error {
	deadline := time.Now().Add(60 * time.Second)
	for {
		if err := exec.CommandContext(ctx, d.tools.Buildctl, append(d.ClientArgs(d.Addr), "debug", "workers")...).Run(); err == nil {
			return nil
		}
		select {
		case err := <-d.done:
			d.done <- err
			return errors.Errorf("buildkitd exited (%v) before serving %s; log: %s", err, d.Addr, tail(d.log, 3000))
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return errors.Errorf("buildkitd did not serve %s within 60s; log: %s", d.Addr, tail(d.log, 3000))
		}
	}
}

// Log is the file holding the daemon's output.
func (d *Daemon) Log() string { return d.log }

// Exited reports whether the daemon has exited, and how, without waiting.
func (d *Daemon) Exited() (bool, error) {
	select {
	case err := <-d.done:
		d.done <- err // keep it readable for Stop and later calls
		return true, err
	default:
		return false, nil
	}
}

// Pid is the daemon's process id.
func (d *Daemon) Pid() int { return d.cmd.Process.Pid }

// ClientArgs are buildctl's flags to reach this daemon at addr: its own
// address, or a proxy's in front of it, with the client certificate of a
// TLS daemon.
func (d *Daemon) ClientArgs(addr string) []string {
	args := []string{"--addr=" + addr}
	if d.tls != nil {
		args = append(args, "--tlsservername="+tlsfiles.ServerName, "--tlscacert="+d.tls.CA,
			"--tlscert="+d.tls.ClientCert, "--tlskey="+d.tls.ClientKey)
	}
	return args
}

// HostPort is the host:port a TCP daemon listens on.
func (d *Daemon) HostPort() string { return strings.TrimPrefix(d.Addr, "tcp://") }

// Buildctl runs buildctl against this daemon, writing its output to out.
func (d *Daemon) Buildctl(ctx context.Context, out *os.File, args ...string) error {
	return d.BuildctlVia(ctx, d.Addr, out, args...)
}

// BuildctlVia runs buildctl against this daemon through addr (a proxy in
// front of it), writing its output to out.
func (d *Daemon) BuildctlVia(ctx context.Context, addr string, out *os.File, args ...string) error {
	cmd := exec.CommandContext(ctx, d.tools.Buildctl, append(d.ClientArgs(addr), args...)...)
	cmd.Stdout, cmd.Stderr = out, out
	return errors.Wrapf(cmd.Run(), "buildctl %s", strings.Join(args, " "))
}

// Snapshotter asks the daemon which snapshotter its worker uses.
func (d *Daemon) Snapshotter(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, d.tools.Buildctl, append(d.ClientArgs(d.Addr), "debug", "workers", "-v")...).CombinedOutput()
	if err != nil {
		return "", errors.Wrapf(err, "buildctl debug workers: %s", out)
	}
	s := bufio.NewScanner(bytes.NewReader(out))
	for s.Scan() {
		if _, v, ok := strings.Cut(s.Text(), "org.mobyproject.buildkit.worker.snapshotter:"); ok {
			return strings.TrimSpace(v), nil
		}
	}
	return "unknown", nil
}

// Stop ends the daemon and waits for it to exit, so its root is no longer
// in use.
func (d *Daemon) Stop() {
	stopGroup(d.cmd, d.done, 30*time.Second)
}
