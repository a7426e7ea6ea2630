package buildx

import (
	"context"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lazylocal/buildkit/hack/remotetest/tlsfiles"
	"github.com/stretchr/testify/require"
)

const (
	daemonStartTimeout = 60 * time.Second
	daemonStopTimeout  = 30 * time.Second
)

// daemon is one fresh buildkitd with the runc OCI worker, its root, socket
// and log in a directory of its own, so that it shares nothing with other
// daemons running on the machine.
type daemon struct {
	tl   tools
	sock string
	log  string
	// addr is what clients dial: unix://sock, or tcp://127.0.0.1:port for
	// a daemon started with startTCPDaemon.
	addr string
	// tls holds the certificates of a TCP daemon, nil for a unix socket.
	tls *tlsfiles.Files
	cmd *exec.Cmd
	// exited is closed when the process has been waited for.
	exited chan struct{}
}

// startDaemon starts a buildkitd, waits until it answers, and stops it when
// the test ends.
func startDaemon(t *testing.T, tl tools) *daemon {
	t.Helper()
	return launchDaemon(t, tl, nil)
}

// startTCPDaemon starts a buildkitd as a remote builder runs: on a TCP port
// of loopback, with TLS and client certificates required (tls names the
// files), and on no unix socket.
func startTCPDaemon(t *testing.T, tl tools, tls tlsfiles.Files) *daemon {
	t.Helper()
	return launchDaemon(t, tl, &tls)
}

func launchDaemon(t *testing.T, tl tools, tls *tlsfiles.Files) *daemon {
	t.Helper()
	dir := t.TempDir()
	d := &daemon{
		tl:     tl,
		sock:   filepath.Join(dir, "buildkitd.sock"),
		log:    filepath.Join(dir, "buildkitd.log"),
		tls:    tls,
		exited: make(chan struct{}),
	}
	d.addr = "unix://" + d.sock
	var listen []string
	if tls != nil {
		d.addr = "tcp://" + freePort(t)
		listen = []string{"--tlscacert", tls.CA, "--tlscert", tls.ServerCert, "--tlskey", tls.ServerKey}
	}
	// An empty config file, and an OTEL socket of its own instead of the
	// shared /run/buildkit one, keep other daemons on the machine out.
	config := filepath.Join(dir, "buildkitd.toml")
	require.NoError(t, os.WriteFile(config, nil, 0o644))
	logf, err := os.Create(d.log)
	require.NoError(t, err)
	defer logf.Close()

	d.cmd = exec.Command(tl.buildkitd, append([]string{
		"--config", config,
		"--oci-worker=true", "--containerd-worker=false",
		"--root", filepath.Join(dir, "root"),
		"--addr", d.addr,
		"--otel-socket-path", filepath.Join(dir, "otel.sock"),
	}, listen...)...)
	d.cmd.Stdout, d.cmd.Stderr = logf, logf
	// If the test binary dies (a -timeout panic skips cleanups), the daemon
	// goes with it instead of lingering.
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	require.NoError(t, d.cmd.Start(), "start %s", tl.buildkitd)
	go func() {
		_ = d.cmd.Wait()
		close(d.exited)
	}()
	t.Cleanup(func() {
		d.stop(t)
		if t.Failed() {
			d.dumpLog(t)
		}
	})

	deadline := time.Now().Add(daemonStartTimeout)
	for {
		select {
		case <-d.exited:
			d.dumpLog(t)
			t.Fatalf("buildkitd exited while starting: %v", d.cmd.ProcessState)
		default:
		}
		if d.ready() {
			return d
		}
		if time.Now().After(deadline) {
			d.dumpLog(t)
			t.Fatalf("buildkitd did not answer on %s within %s", d.addr, daemonStartTimeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (d *daemon) ready() bool {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return exec.CommandContext(ctx, d.tl.buildctl, append(d.clientArgs(d.addr), "debug", "workers")...).Run() == nil
}

// clientArgs are buildctl's flags to reach the daemon at addr: its own
// address, or a proxy in front of it, with the client certificate of a TLS
// daemon.
func (d *daemon) clientArgs(addr string) []string {
	args := []string{"--addr", addr}
	if d.tls != nil {
		args = append(args, "--tlsservername", tlsfiles.ServerName, "--tlscacert", d.tls.CA,
			"--tlscert", d.tls.ClientCert, "--tlskey", d.tls.ClientKey)
	}
	return args
}

// hostPort is the TCP address of a TCP daemon, for a proxy to forward to.
func (d *daemon) hostPort() string {
	return strings.TrimPrefix(d.addr, "tcp://")
}

// freePort returns a loopback address no one listens on now, for a daemon
// to listen on. Another process could take it in between; the daemon then
// fails to start and says so.
func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close())
	return addr
}

// stop ends the daemon with SIGTERM, as an operator would, so that it
// unmounts what it mounted; SIGKILL only if it does not exit in time.
func (d *daemon) stop(t *testing.T) {
	t.Helper()
	select {
	case <-d.exited:
		return
	default:
	}
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
	case <-time.After(daemonStopTimeout):
		t.Errorf("buildkitd (pid %d) did not exit within %s of SIGTERM; killing it", d.cmd.Process.Pid, daemonStopTimeout)
		_ = d.cmd.Process.Kill()
		<-d.exited
	}
}

func (d *daemon) dumpLog(t *testing.T) {
	t.Helper()
	dt, err := os.ReadFile(d.log)
	if err != nil {
		t.Logf("buildkitd log: %v", err)
		return
	}
	const tail = 8 << 10
	if len(dt) > tail {
		dt = dt[len(dt)-tail:]
	}
	t.Logf("buildkitd log (%s), last lines:\n%s", d.log, dt)
}

// importedLayers returns, for each cache record the daemon made from an
// imported layer blob, its disk usage: the size of the blob in the daemon's
// content store plus that of the extracted snapshot. It is zero for a layer
// that was neither pulled nor extracted.
func (d *daemon) importedLayers(t *testing.T) map[string]int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, d.tl.buildctl, append(d.clientArgs(d.addr), "du", "--format", "json")...).Output()
	require.NoError(t, err, "buildctl du")
	var records []struct {
		Description string `json:"description"`
		Size        int64  `json:"size"`
	}
	require.NoError(t, json.Unmarshal(out, &records), "buildctl du output: %s", out)
	layers := map[string]int64{}
	for _, r := range records {
		if dgst, ok := strings.CutPrefix(r.Description, "imported "); ok {
			layers[dgst] += r.Size
		}
	}
	return layers
}
