package scenario

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/pkg/errors"
)

// Session owns everything one demo or benchmark run creates: a work
// directory, the loopback registry and the daemon config. Close removes
// all of it.
type Session struct {
	Tools      Tools
	Dir        string
	Registry   *Registry
	Config     string
	Daemonless *Daemonless
	Logf       Logf
	start      time.Time
	keep       bool
}

// NewSession creates a work directory under parent (named after name),
// starts the registry and writes the daemon config.
func NewSession(ctx context.Context, tools Tools, parent, name string) (_ *Session, err error) {
	dir, err := os.MkdirTemp(parent, name+"-")
	if err != nil {
		return nil, errors.Wrap(err, "failed to create a work directory")
	}
	s := &Session{Tools: tools, Dir: dir, start: time.Now()}
	s.Logf = func(format string, args ...any) {
		fmt.Printf("[%7.1fs] %s\n", time.Since(s.start).Seconds(), fmt.Sprintf(format, args...))
	}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	regDir := filepath.Join(dir, "registry")
	if err := os.MkdirAll(regDir, 0o755); err != nil {
		return nil, errors.WithStack(err)
	}
	if s.Registry, err = StartRegistry(ctx, tools.Registry, regDir); err != nil {
		return nil, err
	}
	s.Logf("registry %s serving http://%s (data in %s)", tools.Registry, s.Registry.Addr, regDir)
	s.Config = filepath.Join(dir, "buildkitd.toml")
	if err := WriteDaemonConfig(s.Config, s.Registry.Addr); err != nil {
		return nil, err
	}
	runDir := filepath.Join(dir, "run")
	if err := os.MkdirAll(runDir, 0o755); err != nil {
		return nil, errors.WithStack(err)
	}
	s.Daemonless = &Daemonless{Tools: tools, Config: s.Config, RunDir: runDir}
	s.Logf("daemonless builds go through %s", s.Daemonless.Mode())
	return s, nil
}

// Elapsed is the time since the session started.
func (s *Session) Elapsed() time.Duration { return time.Since(s.start) }

// Keep makes Close leave the work directory in place, so that the logs of
// a failed run can be read.
func (s *Session) Keep() { s.keep = true }

// Close stops the registry and removes the work directory, unless Keep was
// called.
func (s *Session) Close() {
	if s.Registry != nil {
		s.Registry.Stop()
	}
	if s.keep {
		s.Logf("kept %s", s.Dir)
		return
	}
	if err := RemoveAll(s.Dir); err != nil {
		s.Logf("cleanup: %v", err)
		return
	}
	s.Logf("cleaned up %s", s.Dir)
}

// Mkdir makes a directory under the session's work directory.
func (s *Session) Mkdir(parts ...string) (string, error) {
	p := filepath.Join(append([]string{s.Dir}, parts...)...)
	return p, errors.WithStack(os.MkdirAll(p, 0o755))
}

// SignalContext is cancelled on SIGINT, SIGTERM or SIGHUP and says which
// signal stopped the run, so that a run ended from outside is told apart
// from one that failed.
func SignalContext(parent context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(parent)
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	go func() {
		select {
		case sig := <-ch:
			fmt.Fprintf(os.Stderr, "received %s: stopping and cleaning up\n", sig)
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, func() {
		signal.Stop(ch)
		cancel()
	}
}
