package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/pkg/errors"
)

// profiler takes one CPU profile of a rootful build 2's buildkitd through
// its --debugaddr (Go's net/http/pprof), from the moment it answers, for
// -profile-seconds: read it with go tool pprof -top BUILDKITD FILE.
type profiler struct {
	addr string
	file string
	done chan error
}

// startProfiler picks the daemon's debug address and starts waiting for it.
func startProfiler(ctx context.Context, file string, secs int) (*profiler, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, errors.Wrap(err, "failed to find a free loopback port")
	}
	addr := l.Addr().String()
	l.Close()
	p := &profiler{addr: addr, file: file, done: make(chan error, 1)}
	go func() { p.done <- p.take(ctx, secs) }()
	return p, nil
}

// flag is the buildkitd flag that serves pprof where the profiler asks.
func (p *profiler) flag() string { return "--debugaddr=" + p.addr }

func (p *profiler) take(ctx context.Context, secs int) error {
	base := "http://" + p.addr + "/debug/pprof/"
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := http.Get(base)
		if err == nil {
			resp.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			return errors.Errorf("buildkitd did not serve %s within 60s", base)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	resp, err := http.Get(fmt.Sprintf("%sprofile?seconds=%d", base, secs))
	if err != nil {
		return errors.Wrapf(err, "CPU profile from %s (did the build end within %d s?)", base, secs)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return errors.Errorf("CPU profile from %s: %s", base, resp.Status)
	}
	if err := os.MkdirAll(filepath.Dir(p.file), 0o755); err != nil {
		return errors.WithStack(err)
	}
	f, err := os.Create(p.file)
	if err != nil {
		return errors.WithStack(err)
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		os.Remove(p.file)
		return errors.Wrapf(err, "CPU profile from %s (did the build end within %d s?)", base, secs)
	}
	return errors.WithStack(f.Close())
}

// wait returns how taking the profile went.
func (p *profiler) wait() error { return <-p.done }
