package lazytest

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/moby/buildkit/client"
	"github.com/moby/buildkit/client/llb"
	"github.com/moby/buildkit/identity"
	"github.com/moby/buildkit/util/testutil/integration"
	digest "github.com/opencontainers/go-digest"
	ocispecs "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/stretchr/testify/require"
)

func init() {
	tests = append(tests,
		testLazyConcurrentReset,
		testEagerConcurrentReset,
		testLazyOwnReset,
	)
}

// One directory shared by two jobs: B imports it lazily and mounts the
// imported layers only after a slow step, while A exports to it with
// reset=true, which deletes every blob A's own index does not reference.
// A cleans up, and B still reads what it imported: its client opened those
// blobs when the solve started (series/04).
func testLazyConcurrentReset(t *testing.T, sb integration.Sandbox) {
	concurrentReset(t, sb, true)
}

// The same with eager import, which has read its layers once they load.
func testEagerConcurrentReset(t *testing.T, sb integration.Sandbox) {
	concurrentReset(t, sb, false)
}

func concurrentReset(t *testing.T, sb integration.Sandbox, lazy bool) {
	s := newScenario(t, sb)
	s.seed(t, s.built, nil)

	delay := newDelayServer(t)
	st := llb.Merge([]llb.State{s.built, delay.State()}).
		Run(llb.Args([]string{"/bin/sh", "-c", "cp /sum /out-sum"}), llb.IgnoreCache).Root()
	out := t.TempDir()
	ch, p, _ := watch()
	bDone := make(chan error, 1)
	go func() {
		_, err := s.c.Solve(sb.Context(), marshal(t, sb, st), client.SolveOpt{
			CacheImports: []client.CacheOptionsEntry{{Type: "local", Attrs: map[string]string{"src": s.dir, "lazy": strconv.FormatBool(lazy)}}},
			Exports:      []client.ExportEntry{{Type: client.ExporterLocal, OutputDir: out}},
		}, ch)
		bDone <- err
	}()
	select {
	case <-delay.started:
	case err := <-bDone:
		t.Fatalf("build B ended before reaching its slow step: %v", err)
	}
	if !lazy {
		// Eager import extracts the layers as the records load, which may
		// end after B reached its slow step: wait for it, however long.
		require.Eventually(t, func() bool { return len(p.extracted()) == len(s.mfst.Layers) }, 2*time.Minute, 50*time.Millisecond)
	}

	// A shares only busybox with B: the rest of B's layers are what its
	// reset deletes.
	resetA := func() (deleted []ocispecs.Descriptor) {
		t.Helper()
		a := llb.Image("busybox:latest").Run(llb.Args([]string{"/bin/sh", "-c", "echo " + identity.NewID() + " > /a"})).Root()
		_, err := s.c.Solve(sb.Context(), marshal(t, sb, a), client.SolveOpt{
			CacheExports: []client.CacheOptionsEntry{{Type: "local", Attrs: map[string]string{"dest": s.dir, "mode": "max", "reset": "true"}}},
		}, nil)
		require.NoError(t, err)
		_, m := cacheManifest(t, s.dir)
		for _, l := range s.mfst.Layers {
			if !hasLayer(m, l.Digest) {
				deleted = append(deleted, l)
			}
		}
		require.NotEmpty(t, deleted)
		return deleted
	}
	for _, l := range resetA() {
		require.NoFileExists(t, blobPath(s.dir, l.Digest), "the reset cleans up while B imports the directory")
	}

	delay.Release()
	require.NoError(t, <-bDone)
	got, err := os.ReadFile(filepath.Join(out, "out-sum"))
	require.NoError(t, err)
	require.Equal(t, s.wantSum(), string(got))
}

// A build that imports a directory lazily and exports to it with
// reset=true, the single-job way to keep the directory bounded, cleans it
// up.
func testLazyOwnReset(t *testing.T, sb integration.Sandbox) {
	s := newScenario(t, sb)
	s.seed(t, s.built, nil)
	orphan := blobPath(s.dir, writeOrphan(t, s.dir))

	out := t.TempDir()
	_, err := s.c.Solve(sb.Context(), marshal(t, sb, s.copySum()), client.SolveOpt{
		CacheImports: s.lazyImport(),
		CacheExports: []client.CacheOptionsEntry{{Type: "local", Attrs: map[string]string{"dest": s.dir, "mode": "max", "reset": "true"}}},
		Exports:      []client.ExportEntry{{Type: client.ExporterLocal, OutputDir: out}},
	}, nil)
	require.NoError(t, err)
	got, err := os.ReadFile(filepath.Join(out, "out-sum"))
	require.NoError(t, err)
	require.Equal(t, s.wantSum(), string(got))
	require.NoFileExists(t, orphan, "the build's own reset cleaned up")
	requireComplete(t, s.dir)
}

// writeOrphan writes a blob into dir that no index references.
func writeOrphan(t *testing.T, dir string) digest.Digest {
	t.Helper()
	store := newCountingStore(t, dir)
	data := []byte("orphan " + identity.NewID())
	dgst := digest.FromBytes(data)
	require.NoError(t, content.WriteBlob(t.Context(), store, dgst.String(), bytes.NewReader(data), ocispecs.Descriptor{Digest: dgst, Size: int64(len(data))}))
	return dgst
}
