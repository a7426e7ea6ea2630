package main

import (
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/moby/buildkit/client"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/trace"
)

const (
	infoRequest  = "containerd.services.content.v1.Content/Info"
	readRequest  = "containerd.services.content.v1.Content/Read"
	writeRequest = "containerd.services.content.v1.Content/Write"
)

func TestRequestCounterCountsServerSpans(t *testing.T) {
	c := newRequestCounter()
	tp := newCountingTracerProvider(c)
	defer tp.Shutdown(context.Background())
	tr := tp.Tracer("test")
	// an unsampled remote parent, as the daemon's requests may carry
	parent := trace.ContextWithRemoteSpanContext(context.Background(), trace.NewSpanContext(trace.SpanContextConfig{
		TraceID: trace.TraceID{1}, SpanID: trace.SpanID{1},
	}))
	for _, s := range []struct {
		name string
		kind trace.SpanKind
	}{
		{infoRequest, trace.SpanKindServer},
		{infoRequest, trace.SpanKindServer},
		{readRequest, trace.SpanKindServer},
		{"moby.buildkit.v1.Control/Solve", trace.SpanKindClient},
		{"build", trace.SpanKindInternal},
	} {
		_, span := tr.Start(parent, s.name, trace.WithSpanKind(s.kind))
		span.End()
	}
	require.Equal(t, map[string]int{infoRequest: 2, readRequest: 1}, c.Counts())
}

// TestCountsWhatTheDaemonAsked runs build 2 of a cache exported by build
// 1, imported lazily and exported back with mode=max, on a fresh
// bin/buildkitd, once as the bench does and once serving the cache through
// counting stores: the requests the spans count are the calls the stores
// served, and both ways count the same.
func TestCountsWhatTheDaemonAsked(t *testing.T) {
	buildkitd := findBuildkitd(t)
	work := t.TempDir()
	ctxDir := filepath.Join(work, "context")
	require.NoError(t, os.MkdirAll(ctxDir, 0o755))
	df := "FROM scratch\n"
	const layers = 5
	for i := range layers {
		b := make([]byte, 64<<10)
		_, err := rand.Read(b)
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(filepath.Join(ctxDir, fmt.Sprint("f", i)), b, 0o644))
		df += fmt.Sprintf("COPY f%d /f%d\n", i, i)
	}
	require.NoError(t, os.WriteFile(filepath.Join(ctxDir, "Dockerfile"), []byte(df), 0o644))
	cache := filepath.Join(work, "cache")
	opts := func(addr string, lazy bool) options {
		o := options{Addr: addr, Frontend: "dockerfile.v0", Locals: stringList{"context=" + ctxDir, "dockerfile=" + ctxDir}}
		o.Exports = stringList{"type=local,dest=" + cache + ",mode=max"}
		if lazy {
			o.Imports = stringList{"type=local,src=" + cache + ",lazy=true"}
		}
		return o
	}

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	addr := startBuildkitd(ctx, t, buildkitd, filepath.Join(work, "d1"))
	rep, err := run(ctx, opts(addr, false))
	require.NoError(t, err)
	require.Zero(t, rep.Requests[infoRequest], "build 1 imports nothing: %v", rep.Requests)
	require.NotZero(t, rep.Requests[writeRequest], "build 1 exports the cache: %v", rep.Requests)

	addr = startBuildkitd(ctx, t, buildkitd, filepath.Join(work, "d2"))
	plain, err := run(ctx, opts(addr, true))
	require.NoError(t, err)

	addr = startBuildkitd(ctx, t, buildkitd, filepath.Join(work, "d3"))
	o := opts(addr, true)
	o.ServeCache = true
	checked, err := run(ctx, o)
	require.NoError(t, err)
	t.Logf("default: %v", plain.Requests)
	t.Logf("serve-cache: %v; store: %v; Info by digest: %v", checked.Requests, checked.Store, checked.InfoDigests)

	// at least one Info per layer: every imported record is checked
	require.GreaterOrEqual(t, checked.Requests[infoRequest], layers)
	require.Equal(t, checked.Store[infoRequest+": Info"], checked.Requests[infoRequest], "Info requests")
	require.Equal(t, checked.Store[readRequest+": ReaderAt"], checked.Requests[readRequest], "Read requests")
	require.Equal(t, checked.Store[writeRequest+": Writer"], checked.Requests[writeRequest], "Write requests")
	n := 0
	for _, v := range checked.InfoDigests {
		n += v
	}
	require.Equal(t, checked.Requests[infoRequest], n, "Info requests by digest")
	for _, m := range []string{infoRequest, readRequest, writeRequest} {
		require.Equal(t, checked.Requests[m], plain.Requests[m], "%s: the bench's way and --serve-cache", m)
	}
}

// findBuildkitd is the buildkitd make build makes.
func findBuildkitd(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("these tests start buildkitd with the runc worker: run them as root (make test-buildclient)")
	}
	p, err := filepath.Abs(filepath.Join("..", "..", "bin", "buildkitd"))
	require.NoError(t, err)
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("%s not found: run make build first", p)
	}
	return p
}

// startBuildkitd starts a fresh buildkitd with its state in dir, stopped
// when the test ends, and returns its address once it lists its workers.
func startBuildkitd(ctx context.Context, t *testing.T, buildkitd, dir string) string {
	t.Helper()
	require.NoError(t, os.MkdirAll(dir, 0o700))
	addr := "unix://" + filepath.Join(dir, "buildkitd.sock")
	log, err := os.Create(filepath.Join(dir, "buildkitd.log"))
	require.NoError(t, err)
	defer log.Close()
	cmd := exec.Command(buildkitd, "--root="+filepath.Join(dir, "root"), "--addr="+addr)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	require.NoError(t, cmd.Start())
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	})
	c, err := client.New(ctx, addr)
	require.NoError(t, err)
	defer c.Close()
	for {
		if _, err := c.ListWorkers(ctx); err == nil {
			return addr
		}
		select {
		case <-done:
			b, _ := os.ReadFile(log.Name())
			t.Fatalf("buildkitd exited before serving %s: %s", addr, b)
		case <-ctx.Done():
			t.Fatalf("buildkitd did not serve %s: %v", addr, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func TestParseArgs(t *testing.T) {
	o, err := parseArgs([]string{"--addr=tcp://127.0.0.1:1", "--tlsservername=b", "--tlscacert=ca", "--tlscert=c", "--tlskey=k",
		"build", "--progress=plain", "--frontend=dockerfile.v0", "--local", "context=/c", "--local", "dockerfile=/c",
		"--export-cache", "type=local,dest=/x,mode=max", "--import-cache", "type=local,src=/x,lazy=true", "--report", "/r.json"})
	require.NoError(t, err)
	require.Equal(t, options{
		Addr: "tcp://127.0.0.1:1", ServerName: "b", CACert: "ca", Cert: "c", Key: "k",
		Frontend: "dockerfile.v0", Locals: stringList{"context=/c", "dockerfile=/c"},
		Imports: stringList{"type=local,src=/x,lazy=true"}, Exports: stringList{"type=local,dest=/x,mode=max"},
		Report: "/r.json",
	}, o)

	for _, tc := range []struct {
		args []string
		err  string
	}{
		{[]string{"--addr=x"}, `want the command build after the global flags, got []`},
		{[]string{"prune"}, `want the command build after the global flags, got ["prune"]`},
		{[]string{"build", "--frontend=dockerfile.v0", "--progress=tty"}, "--progress=tty: only plain is supported"},
		{[]string{"build"}, "--frontend is required: buildclient does not read LLB from stdin"},
		{[]string{"build", "--frontend=dockerfile.v0", "extra"}, `unexpected arguments ["extra"]`},
	} {
		_, err := parseArgs(tc.args)
		require.EqualError(t, err, tc.err, "%q", tc.args)
	}
}
