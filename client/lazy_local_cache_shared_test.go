package client

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/moby/buildkit/client/llb"
	"github.com/moby/buildkit/identity"
	"github.com/moby/buildkit/util/testutil/cachetest"
	"github.com/moby/buildkit/util/testutil/integration"
	digest "github.com/opencontainers/go-digest"
	ocispecs "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

func init() {
	allTests = append(allTests,
		testLazyLocalCacheConcurrentReset,
		testEagerLocalCacheConcurrentReset,
		testLazyLocalCacheOwnReset,
		testLazyLocalCacheReadOnlyDir,
		testLazyLocalCacheLostBlobsPersistentDaemon,
		testLazyLocalCacheCorruptCopyConcurrent,
	)
}

// One directory shared by two jobs: B imports it lazily and mounts the
// imported layers only after a slow step, while A exports to it with
// reset=true, which deletes every blob A's own index does not reference.
// B holds the directory's lock, so A skips its cleanup and B reads what it
// imported; once B has ended, A's next reset cleans up.
func testLazyLocalCacheConcurrentReset(t *testing.T, sb integration.Sandbox) {
	testLocalCacheConcurrentReset(t, sb, true)
}

// The same with eager import, which reads its layers at load.
func testEagerLocalCacheConcurrentReset(t *testing.T, sb integration.Sandbox) {
	testLocalCacheConcurrentReset(t, sb, false)
}

func testLocalCacheConcurrentReset(t *testing.T, sb integration.Sandbox, lazy bool) {
	s := newScenario(t, sb)
	s.seed(t, s.built, nil)

	delay := newDelayServer(t)
	st := llb.Merge([]llb.State{s.built, delay.State()}).
		Run(llb.Args([]string{"/bin/sh", "-c", "cp /sum /out-sum"}), llb.IgnoreCache).Root()
	out := t.TempDir()
	ch, progress, _ := watchProgress()
	bDone := make(chan error, 1)
	go func() {
		_, err := s.c.Solve(sb.Context(), marshal(t, sb, st), SolveOpt{
			CacheImports: []CacheOptionsEntry{{Type: "local", Attrs: map[string]string{"src": s.dir, "lazy": boolAttr(lazy)}}},
			Exports:      []ExportEntry{{Type: ExporterLocal, OutputDir: out}},
		}, ch)
		bDone <- err
	}()
	select {
	case <-delay.started:
	case err := <-bDone:
		require.NoError(t, err)
		t.Fatal("build B ended before reaching its slow step")
	}
	if !lazy {
		// Eager import has pulled and extracted the layers once they load.
		require.Eventually(t, func() bool { return len(progress.Extracted()) == len(s.mfst.Layers) }, time.Minute, 50*time.Millisecond)
	}

	// A shares only busybox with B: the rest of B's layers are what its
	// reset deletes.
	resetA := func() (deleted []ocispecs.Descriptor) {
		t.Helper()
		a := llb.Image("busybox:latest").Run(llb.Args([]string{"/bin/sh", "-c", "echo " + identity.NewID() + " > /a"})).Root()
		_, err := s.c.Solve(sb.Context(), marshal(t, sb, a), SolveOpt{
			CacheExports: []CacheOptionsEntry{{Type: "local", Attrs: map[string]string{"dest": s.dir, "mode": "max", "reset": "true"}}},
		}, nil)
		require.NoError(t, err)
		_, m := cachetest.Manifest(t, s.dir)
		for _, l := range s.mfst.Layers {
			if !slices.ContainsFunc(m.Layers, func(d ocispecs.Descriptor) bool { return d.Digest == l.Digest }) {
				deleted = append(deleted, l)
			}
		}
		require.NotEmpty(t, deleted)
		return deleted
	}
	deleted := resetA()
	if lazy {
		for _, l := range deleted {
			require.FileExists(t, cachetest.BlobPath(s.dir, l.Digest), "the reset skipped its cleanup while B imports the directory lazily")
		}
	}

	delay.Release()
	require.NoError(t, <-bDone)
	got, err := os.ReadFile(filepath.Join(out, "out-sum"))
	require.NoError(t, err)
	require.Equal(t, s.wantSum(), string(got))

	for _, l := range resetA() {
		require.NoFileExists(t, cachetest.BlobPath(s.dir, l.Digest), "once B has ended, a reset cleans up")
	}
}

// A build that imports a directory lazily and exports to it with
// reset=true, the single-job way to keep the directory bounded, still
// cleans it up: the import's lock is released before the reset.
func testLazyLocalCacheOwnReset(t *testing.T, sb integration.Sandbox) {
	s := newScenario(t, sb)
	s.seed(t, s.built, nil)
	orphan := cachetest.BlobPath(s.dir, writeOrphan(t, s.dir))

	st := s.built.Run(llb.Args([]string{"/bin/sh", "-c", "cp /sum /out-sum"}), llb.IgnoreCache).Root()
	out := t.TempDir()
	_, err := s.c.Solve(sb.Context(), marshal(t, sb, st), SolveOpt{
		CacheImports: []CacheOptionsEntry{{Type: "local", Attrs: map[string]string{"src": s.dir, "lazy": "true"}}},
		CacheExports: []CacheOptionsEntry{{Type: "local", Attrs: map[string]string{"dest": s.dir, "mode": "max", "reset": "true"}}},
		Exports:      []ExportEntry{{Type: ExporterLocal, OutputDir: out}},
	}, nil)
	require.NoError(t, err)
	got, err := os.ReadFile(filepath.Join(out, "out-sum"))
	require.NoError(t, err)
	require.Equal(t, s.wantSum(), string(got))
	require.NoFileExists(t, orphan, "the build's own reset cleaned up")
	cachetest.RequireComplete(t, s.dir)
}

// A read-only cache directory (mounted :ro in some CI setups) can hold no
// new lock file: the lazy import goes on without the lock.
func testLazyLocalCacheReadOnlyDir(t *testing.T, sb integration.Sandbox) {
	if os.Getuid() != 0 {
		t.Skip("a read-only bind mount needs root")
	}
	s := newScenario(t, sb)
	s.seed(t, s.built, nil)
	require.NoError(t, os.Remove(filepath.Join(s.dir, "cache.lock")))
	ro := filepath.Join(t.TempDir(), "ro")
	require.NoError(t, os.Mkdir(ro, 0o755))
	require.NoError(t, unix.Mount(s.dir, ro, "", unix.MS_BIND, ""))
	t.Cleanup(func() { _ = unix.Unmount(ro, unix.MNT_DETACH) })
	require.NoError(t, unix.Mount("", ro, "", unix.MS_REMOUNT|unix.MS_BIND|unix.MS_RDONLY, ""))
	require.ErrorIs(t, os.WriteFile(filepath.Join(ro, "probe"), nil, 0o644), unix.EROFS)

	st := s.built.Run(llb.Args([]string{"/bin/sh", "-c", "cp /sum /out-sum"}), llb.IgnoreCache).Root()
	out := t.TempDir()
	ch, p, wait := watchProgress()
	_, err := s.c.Solve(sb.Context(), marshal(t, sb, st), SolveOpt{
		CacheImports: []CacheOptionsEntry{{Type: "local", Attrs: map[string]string{"src": ro, "lazy": "true"}}},
		Exports:      []ExportEntry{{Type: ExporterLocal, OutputDir: out}},
	}, ch)
	require.NoError(t, err)
	wait()
	require.Empty(t, p.ImportErrors())
	require.NotContains(t, p.Uncached(), "checksum data", "the step came from the imported cache")
	require.NotEmpty(t, p.Extracted(), "the RUN read the lazily imported layers")
	got, err := os.ReadFile(filepath.Join(out, "out-sum"))
	require.NoError(t, err)
	require.Equal(t, s.wantSum(), string(got))
	require.NoFileExists(t, filepath.Join(s.dir, "cache.lock"))
}

// A persistent daemon keeps what one build imported lazily. When the
// directory loses blobs before the next build (rotated, reset by another
// job, restored from another cache key), that build reruns what it cannot
// read, as eager import does, instead of failing.
func testLazyLocalCacheLostBlobsPersistentDaemon(t *testing.T, sb integration.Sandbox) {
	s := newScenario(t, sb)
	s.seed(t, s.built, nil)
	imports := []CacheOptionsEntry{{Type: "local", Attrs: map[string]string{"src": s.dir, "lazy": "true"}}}
	_, err := s.c.Solve(sb.Context(), marshal(t, sb, s.built), SolveOpt{CacheImports: imports}, nil)
	require.NoError(t, err)

	// Every layer blob goes: the daemon holds the records, lazily.
	for _, l := range s.mfst.Layers {
		require.NoError(t, os.Remove(cachetest.BlobPath(s.dir, l.Digest)))
	}
	st := s.built.Run(llb.Args([]string{"/bin/sh", "-c", "cp /sum /out-sum"}), llb.IgnoreCache).Root()
	out := t.TempDir()
	_, err = s.c.Solve(sb.Context(), marshal(t, sb, st), SolveOpt{
		CacheImports: imports,
		Exports:      []ExportEntry{{Type: ExporterLocal, OutputDir: out}},
	}, nil)
	require.NoError(t, err)
	got, err := os.ReadFile(filepath.Join(out, "out-sum"))
	require.NoError(t, err)
	require.Equal(t, s.wantSum(), string(got))
}

// Two builds on one daemon mount the same lazily imported layer at once,
// one from the directory, one from a copy of it where that layer is
// corrupt. They share one fetch of the layer (the cache record is the
// same): when the corrupt one is the first to start it, both fail with the
// corrupt directory's error. Neither ever gets corrupt content, and the
// failed fetch leaves nothing behind: the good build run again succeeds.
func testLazyLocalCacheCorruptCopyConcurrent(t *testing.T, sb integration.Sandbox) {
	s := newScenario(t, sb)
	s.seed(t, s.built, nil)
	corrupt := filepath.Join(t.TempDir(), "corrupt")
	require.NoError(t, os.CopyFS(corrupt, os.DirFS(s.dir)))
	victim := cachetest.BlobPath(corrupt, s.mfst.Layers[len(s.mfst.Layers)-1].Digest)
	dt, err := os.ReadFile(victim)
	require.NoError(t, err)
	dt[len(dt)/2] ^= 0xff
	require.NoError(t, os.Chmod(victim, 0o644))
	require.NoError(t, os.WriteFile(victim, dt, 0o644))

	st := s.built.Run(llb.Args([]string{"/bin/sh", "-c", "cp /sum /out-sum"}), llb.IgnoreCache).Root()
	build := func(dir string) (string, error) {
		out := t.TempDir()
		_, err := s.c.Solve(sb.Context(), marshal(t, sb, st), SolveOpt{
			CacheImports: []CacheOptionsEntry{{Type: "local", Attrs: map[string]string{"src": dir, "lazy": "true"}}},
			Exports:      []ExportEntry{{Type: ExporterLocal, OutputDir: out}},
		}, nil)
		return out, err
	}
	requireSum := func(out string) {
		t.Helper()
		got, err := os.ReadFile(filepath.Join(out, "out-sum"))
		require.NoError(t, err)
		require.Equal(t, s.wantSum(), string(got), "never the corrupt content")
	}
	for round := range 3 {
		if round > 0 {
			ensurePruneAll(t, s.c, sb)
		}
		outs := make([]string, 2)
		errs := make([]error, 2)
		done := make(chan struct{}, 2)
		for i, dir := range []string{s.dir, corrupt} {
			go func() {
				defer func() { done <- struct{}{} }()
				outs[i], errs[i] = build(dir)
			}()
		}
		<-done
		<-done
		for i, err := range errs {
			if err != nil {
				require.ErrorContains(t, err, "local cache "+corrupt+": blob ", "round %d build %d", round, i)
				require.ErrorContains(t, err, "is corrupt", "round %d build %d", round, i)
			} else {
				requireSum(outs[i])
			}
		}
		if errs[0] != nil {
			out, err := build(s.dir)
			require.NoError(t, err, "round %d: the good build again", round)
			requireSum(out)
		}
	}
}

func boolAttr(b bool) string {
	if b {
		return "true"
	}
	return "false"
}

// writeOrphan writes a blob into dir that no index references.
func writeOrphan(t *testing.T, dir string) digest.Digest {
	t.Helper()
	store := cachetest.NewCountingStore(t, dir)
	data := []byte("orphan " + identity.NewID())
	dgst := digest.FromBytes(data)
	require.NoError(t, content.WriteBlob(t.Context(), store, dgst.String(), bytes.NewReader(data), ocispecs.Descriptor{Digest: dgst, Size: int64(len(data))}))
	return dgst
}
