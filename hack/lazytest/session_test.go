package lazytest

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/moby/buildkit/client/llb"
	gw "github.com/moby/buildkit/frontend/gateway/client"
	"github.com/moby/buildkit/util/testutil/integration"
	"github.com/pkg/errors"
	"github.com/stretchr/testify/require"
	"github.com/tonistiigi/fsutil"
)

func init() {
	tests = append(tests,
		testLazyLinkedBuildImports,
		testLazyLinkedBuildNoImport,
	)
}

// linked is build A's lazy import of a cache of one copied file, held open
// so that build B can use A's result.
type linked struct {
	s       *scenario
	payload []byte
	locals  map[string]fsutil.FS
	base    llb.State
}

func newLinked(t *testing.T, sb integration.Sandbox) *linked {
	t.Helper()
	// No base image: the cache holds one layer, the copied file.
	l := &linked{s: &scenario{c: newClient(t, sb), sb: sb, dir: filepath.Join(t.TempDir(), "cache")}, payload: data("payload", 128<<10)}
	ctxDir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(ctxDir, "payload"), l.payload, 0o644))
	fs, err := fsutil.NewFS(ctxDir)
	require.NoError(t, err)
	l.locals = map[string]fsutil.FS{"context": fs}
	l.base = llb.Scratch().File(llb.Copy(llb.Local("context"), "payload", "/payload"))
	l.s.seed(t, l.base, l.locals)
	return l
}

// run models linked builds: build A imports the cache lazily, exposes its
// result and waits; build B starts from A's state behind a delayed source,
// so B reads the lazily imported layer only once it has loaded A's state.
// aEnds says whether A ends before B reads; bImports whether B imports the
// directory itself. It returns B's error and, on success, checks B's output
// and that B read the layer through its own session and A read none.
func (l *linked) run(t *testing.T, aEnds, bImports bool) error {
	t.Helper()
	s := l.s
	pruneAll(t, s.c, s.sb)
	ctx, cancel := context.WithTimeoutCause(s.sb.Context(), 3*time.Minute, errors.New("linked builds hang"))
	defer cancel()

	stateFromA := make(chan llb.State, 1)
	releaseA := make(chan struct{})
	var releaseOnce sync.Once
	endA := func() { releaseOnce.Do(func() { close(releaseA) }) }
	t.Cleanup(endA)
	aDone := make(chan error, 1)
	storeA := newCountingStore(t, s.dir)
	go func() {
		o := s.imports(true, storeA)
		o.locals = l.locals
		_, err := s.c.Build(ctx, o.solveOpt(t), "lazytest-a", func(ctx context.Context, gc gw.Client) (*gw.Result, error) {
			res, err := gc.Solve(ctx, gw.SolveRequest{Definition: marshal(t, s.sb, l.base).ToPB(), CacheImports: o.cacheImports(), Evaluate: true})
			if err != nil {
				return nil, errors.Wrap(err, "build A imports the cache")
			}
			ref, err := res.SingleRef()
			if err != nil {
				return nil, err
			}
			st, err := ref.ToState()
			if err != nil {
				return nil, err
			}
			stateFromA <- st
			select {
			case <-releaseA:
				return gw.NewResult(), nil
			case <-ctx.Done():
				return nil, context.Cause(ctx)
			}
		}, nil)
		aDone <- err
	}()

	var stateA llb.State
	select {
	case stateA = <-stateFromA:
	case err := <-aDone:
		t.Fatalf("build A ended before exposing its state: %v", err)
	}
	require.Empty(t, storeA.layerReads(s.mfst), "build A loaded the record lazily")

	delay := newDelayServer(t)
	out := t.TempDir()
	bDone := make(chan error, 1)
	storeB := newCountingStore(t, s.dir)
	go func() {
		o := importOpts{output: out}
		if bImports {
			o = s.imports(true, storeB)
			o.output = out
		}
		_, err := s.c.Build(ctx, o.solveOpt(t), "lazytest-b", func(ctx context.Context, gc gw.Client) (*gw.Result, error) {
			merged := llb.Merge([]llb.State{stateA, delay.State()})
			def, err := llb.Scratch().File(llb.Copy(merged, "/payload", "/copied")).Marshal(ctx)
			if err != nil {
				return nil, err
			}
			req := gw.SolveRequest{Definition: def.ToPB(), Evaluate: true}
			if bImports {
				req.CacheImports = o.cacheImports()
			}
			return gc.Solve(ctx, req)
		}, nil)
		bDone <- err
	}()

	// B has loaded A's state once it waits for the delayed source.
	select {
	case <-delay.started:
	case err := <-bDone:
		t.Fatalf("build B ended before loading A's state: %v", err)
	}
	if aEnds {
		endA()
		require.NoError(t, <-aDone)
	}
	delay.Release()
	var bErr error
	select {
	case bErr = <-bDone:
	case <-ctx.Done():
		t.Fatal("build B hangs")
	}
	if !aEnds {
		endA()
		require.NoError(t, <-aDone)
	}
	require.Empty(t, storeA.layerReads(s.mfst), "nothing was read through A's session")
	if bErr == nil {
		got, err := os.ReadFile(filepath.Join(out, "copied"))
		require.NoError(t, err)
		require.Equal(t, l.payload, got)
		if bImports {
			require.NotEmpty(t, storeB.layerReads(s.mfst), "B read the layer through its own session")
		}
	}
	return bErr
}

// B imports the same directory: it reads the layer A imported lazily
// through its own session, after A and its session have ended, and while A
// is still running.
func testLazyLinkedBuildImports(t *testing.T, sb integration.Sandbox) {
	l := newLinked(t, sb)
	require.NoError(t, l.run(t, true, true), "A ended")
	require.NoError(t, l.run(t, false, true), "A running")
}

// B does not import the directory: the only session that serves it is A's,
// which a bound read never falls back to, so B fails with the importer's
// error, after A has ended and while A is still running alike.
func testLazyLinkedBuildNoImport(t *testing.T, sb integration.Sandbox) {
	l := newLinked(t, sb)
	want := "failed to read blob " + l.s.mfst.Layers[0].Digest.String() + " from local cache " + l.s.dir
	require.ErrorContains(t, l.run(t, true, false), want, "A ended")
	require.ErrorContains(t, l.run(t, false, false), want, "A running")
}
