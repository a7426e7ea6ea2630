package lazytest

import (
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/moby/buildkit/client"
	"github.com/moby/buildkit/client/llb"
	"github.com/moby/buildkit/util/testutil"
	"github.com/moby/buildkit/util/testutil/integration"
	digest "github.com/opencontainers/go-digest"
	"github.com/stretchr/testify/require"
	"github.com/tonistiigi/fsutil"
	"golang.org/x/sync/errgroup"
)

func init() {
	tests = append(tests,
		testEagerReadsEveryLayer,
		testLazyAllCachedReadsNoLayer,
		testLazyMergedCopyStaysLazy,
		testLazyMountedCorrect,
		testLazyConcurrentSharedVertices,
		testLazyRoundTrip,
		testLazyInvalidAttr,
		testLazyDeletedBlob,
		testLazyLostBlobsPersistentDaemon,
		testLazyCorruptBlob,
		testLazyExportCorruptBlob,
	)
}

// Eager stays eager: a plain import into an empty daemon reads every
// imported layer while loading the cached step.
func testEagerReadsEveryLayer(t *testing.T, sb integration.Sandbox) {
	s := newScenario(t, sb)
	s.seed(t, s.built, nil)

	store := newCountingStore(t, s.dir)
	p, err := buildWithImport(sb.Context(), t, s.c, marshal(t, sb, s.built), s.imports(false, store))
	require.NoError(t, err)
	require.Empty(t, p.uncached(), "every step comes from the imported cache")
	require.Len(t, store.layerReads(s.mfst), len(s.mfst.Layers), "eager import reads each imported layer")
}

// Lazy stays lazy: a rebuild whose steps are all cached reads no layer blob
// from the cache directory.
func testLazyAllCachedReadsNoLayer(t *testing.T, sb integration.Sandbox) {
	s := newScenario(t, sb)
	s.seed(t, s.built, nil)

	store := newCountingStore(t, s.dir)
	p, err := buildWithImport(sb.Context(), t, s.c, marshal(t, sb, s.built), s.imports(true, store))
	require.NoError(t, err)
	require.Empty(t, p.uncached(), "every step comes from the imported cache")
	require.Empty(t, store.layerReads(s.mfst), "no layer blob is pulled into the daemon")
	require.Positive(t, store.reads[s.desc.Digest], "the manifest was read through the counting store")
}

// The same when the changed step is a copy merged onto the cached result
// (COPY --link): the copy lands on scratch, so nothing mounts the lazily
// imported parent.
func testLazyMergedCopyStaysLazy(t *testing.T, sb integration.Sandbox) {
	s := newScenario(t, sb)
	src := t.TempDir()
	linked := func() (llb.State, map[string]fsutil.FS) {
		fs, err := fsutil.NewFS(src)
		require.NoError(t, err)
		cp := llb.Scratch().File(llb.Copy(llb.Local("src"), "app.txt", "/app/app.txt", &llb.CopyInfo{CreateDestPath: true}), llb.WithCustomName("copy app"))
		return llb.Merge([]llb.State{s.built, cp}), map[string]fsutil.FS{"src": fs}
	}
	require.NoError(t, os.WriteFile(filepath.Join(src, "app.txt"), []byte("v1"), 0o644))
	st, locals := linked()
	s.seed(t, st, locals)

	require.NoError(t, os.WriteFile(filepath.Join(src, "app.txt"), []byte("v2"), 0o644))
	st, locals = linked()
	store := newCountingStore(t, s.dir)
	o := s.imports(true, store)
	o.locals = locals
	p, err := buildWithImport(sb.Context(), t, s.c, marshal(t, sb, st), o)
	require.NoError(t, err)
	require.False(t, p.cached(t, "copy app"), "the changed copy runs")
	require.True(t, p.cached(t, "checksum data"))
	require.Empty(t, store.layerReads(s.mfst))
}

// Lazy is correct when mounted: an uncached RUN on top of lazily imported
// layers sees exactly their files, and an OCI export of the result carries
// the imported layers byte for byte as they are in the cache, plus the new
// one.
func testLazyMountedCorrect(t *testing.T, sb integration.Sandbox) {
	s := newScenario(t, sb)
	s.seed(t, s.built, nil)

	st := s.built.Run(llb.Args([]string{"/bin/sh", "-c", "sha256sum /data/* > /sums; cat /sum >> /sums; find /data -type f | sort > /list"}), llb.IgnoreCache).Root()
	out := t.TempDir()
	ociTar := filepath.Join(t.TempDir(), "image.tar")
	store := newCountingStore(t, s.dir)
	o := s.imports(true, store)
	o.output, o.oci = out, ociTar
	p, err := buildWithImport(sb.Context(), t, s.c, marshal(t, sb, st), o)
	require.NoError(t, err)
	require.True(t, p.cached(t, "checksum data"))
	require.Len(t, store.layerReads(s.mfst), len(s.mfst.Layers), "the RUN mounts every imported layer")

	var want, list strings.Builder
	for i := 1; i <= dataLayers; i++ {
		f := fmt.Sprintf("/data/layer%d", i)
		fmt.Fprintf(&want, "%x  %s\n", sha256.Sum256(s.files[f]), f)
		list.WriteString(f + "\n")
	}
	want.WriteString(s.wantSum())
	got, err := os.ReadFile(filepath.Join(out, "sums"))
	require.NoError(t, err)
	require.Equal(t, want.String(), string(got))
	got, err = os.ReadFile(filepath.Join(out, "list"))
	require.NoError(t, err)
	require.Equal(t, list.String(), string(got), "exactly the imported files under /data")
	for f, dt := range s.files {
		got, err := os.ReadFile(filepath.Join(out, f))
		require.NoError(t, err)
		require.Equal(t, dt, got, f)
	}

	layers := ociLayers(t, ociTar)
	require.Len(t, layers, len(s.mfst.Layers)+1)
	for _, l := range layers[:len(layers)-1] {
		require.True(t, hasLayer(s.mfst, l.Digest), "exported layer %s is an imported one", l.Digest)
		want, err := os.ReadFile(blobPath(s.dir, l.Digest))
		require.NoError(t, err, "exported layer %s is an imported blob", l.Digest)
		require.Equal(t, want, ociLayerBlob(t, ociTar, l), "layer %s unchanged", l.Digest)
	}
}

// Concurrent builds sharing vertices, as linked bake targets do: the
// importing build finishes first, the other mounts the shared record after
// it, through its own session.
func testLazyConcurrentSharedVertices(t *testing.T, sb integration.Sandbox) {
	s := newScenario(t, sb)
	s.seed(t, s.built, nil)
	for round := range 2 {
		if round > 0 {
			pruneAll(t, s.c, sb)
		}
		delay := newDelayServer(t)
		out := t.TempDir()
		first, second := newCountingStore(t, s.dir), newCountingStore(t, s.dir)
		var eg errgroup.Group
		eg.Go(func() error {
			defer delay.Release()
			_, err := buildWithImport(sb.Context(), t, s.c, marshal(t, sb, s.built), s.imports(true, first))
			return err
		})
		eg.Go(func() error {
			st := llb.Merge([]llb.State{s.built, delay.State()}).
				Run(llb.Args([]string{"/bin/sh", "-c", "cp /sum /out-sum"}), llb.IgnoreCache).Root()
			o := s.imports(true, second)
			o.output = out
			_, err := buildWithImport(sb.Context(), t, s.c, marshal(t, sb, st), o)
			return err
		})
		require.NoError(t, eg.Wait(), "round %d", round)
		got, err := os.ReadFile(filepath.Join(out, "out-sum"))
		require.NoError(t, err)
		require.Equal(t, s.wantSum(), string(got), "round %d", round)
		require.Empty(t, first.layerReads(s.mfst), "round %d: the all-cached build read no layer", round)
		require.Len(t, second.layerReads(s.mfst), len(s.mfst.Layers), "round %d: the mounting build read the layers through its own session", round)
	}
}

// Round trip: a lazy import from dir plus a mode=max export, to a new
// directory and then back into dir itself, writes every blob the new index
// references, including layers never pulled into the daemon, and a fresh
// daemon importing the result finds every step cached without reading a
// layer.
func testLazyRoundTrip(t *testing.T, sb integration.Sandbox) {
	s := newScenario(t, sb)
	s.seed(t, s.built, nil)
	def := marshal(t, sb, s.built)

	for _, dest := range []string{filepath.Join(t.TempDir(), "cache-new"), s.dir} {
		_, err := s.c.Solve(sb.Context(), def, client.SolveOpt{
			CacheImports: s.lazyImport(),
			CacheExports: []client.CacheOptionsEntry{{Type: "local", Attrs: map[string]string{"dest": dest, "mode": "max"}}},
		}, nil)
		require.NoError(t, err, "export to %s", dest)
		m := requireComplete(t, dest)
		require.Equal(t, s.mfst.Layers, m.Layers, "%s holds the imported layers", dest)

		pruneAll(t, s.c, sb)
		desc, _ := cacheManifest(t, dest)
		store := newCountingStore(t, dest)
		p, err := buildWithImport(sb.Context(), t, s.c, def, importOpts{dir: dest, digest: desc.Digest, lazy: true, store: store})
		require.NoError(t, err)
		require.Empty(t, p.uncached(), "a fresh daemon importing %s is fully cached", dest)
		require.Empty(t, store.layerReads(m))
		pruneAll(t, s.c, sb)
	}
}

// An invalid lazy value fails the import with an error naming the
// attribute and the value. The solver builds on without a cache it could
// not import, as for any importer error, and reports it on the import.
func testLazyInvalidAttr(t *testing.T, sb integration.Sandbox) {
	s := newScenario(t, sb)
	s.seed(t, s.built, nil)
	ch, p, wait := watch()
	_, err := s.c.Solve(sb.Context(), marshal(t, sb, s.built), client.SolveOpt{
		CacheImports: []client.CacheOptionsEntry{{Type: "local", Attrs: map[string]string{"src": s.dir, "lazy": "maybe"}}},
	}, ch)
	require.NoError(t, err)
	wait()
	errs := p.importErrors()
	require.Len(t, errs, 1)
	require.Contains(t, errs[0], `failed to parse lazy: strconv.ParseBool: parsing "maybe": invalid syntax`)
	require.False(t, p.cached(t, "checksum data"), "nothing was imported")
}

// A layer blob deleted from the cache directory after export: the record
// that needs it is dropped at load, so the build succeeds, the step whose
// layer is gone runs again, and a new mode=max export references no missing
// blob.
func testLazyDeletedBlob(t *testing.T, sb integration.Sandbox) {
	s := newScenario(t, sb)
	base := s.built.Run(llb.Args([]string{"/bin/sh", "-c", "echo abc-def > /foo && echo abc > /detection-file"}), llb.WithCustomName("detection run")).Root()
	final := llb.Scratch().File(llb.Copy(base, "/foo", "/out"))
	s.seed(t, final, nil)

	var runLayer digest.Digest
	for _, l := range s.mfst.Layers {
		dt, err := os.ReadFile(blobPath(s.dir, l.Digest))
		require.NoError(t, err)
		m, err := testutil.ReadTarToMap(dt, true)
		require.NoError(t, err)
		if _, ok := m["detection-file"]; ok {
			require.Empty(t, runLayer, "one layer holds detection-file")
			runLayer = l.Digest
		}
	}
	require.NotEmpty(t, runLayer)
	require.NoError(t, os.Remove(blobPath(s.dir, runLayer)))

	dir2 := filepath.Join(t.TempDir(), "cache2")
	_, err := s.c.Solve(sb.Context(), marshal(t, sb, final), client.SolveOpt{
		CacheImports: s.lazyImport(),
		CacheExports: []client.CacheOptionsEntry{{Type: "local", Attrs: map[string]string{"dest": dir2, "mode": "max"}}},
	}, nil)
	require.NoError(t, err)
	m := requireComplete(t, dir2)
	require.False(t, hasLayer(m, runLayer), "the new cache does not reference the deleted blob")

	// A build that needs the missing layer runs its step again.
	pruneAll(t, s.c, sb)
	out := t.TempDir()
	ch, p, wait := watch()
	_, err = s.c.Solve(sb.Context(), marshal(t, sb, base), client.SolveOpt{
		CacheImports: s.lazyImport(),
		Exports:      []client.ExportEntry{{Type: client.ExporterLocal, OutputDir: out}},
	}, ch)
	require.NoError(t, err)
	wait()
	require.False(t, p.cached(t, "detection run"), "the step whose layer is gone runs again")
	require.True(t, p.cached(t, "checksum data"), "the steps whose layers are there come from cache")
	got, err := os.ReadFile(filepath.Join(out, "detection-file"))
	require.NoError(t, err)
	require.Equal(t, "abc\n", string(got))
	// Dropping the records left no ref in use behind.
	pruneAll(t, s.c, sb)
}

// A persistent daemon keeps what one build imported lazily. When the
// directory loses its layer blobs before the next build (rotated, reset by
// another job), that build reruns what it cannot read, as eager import
// would, instead of failing.
func testLazyLostBlobsPersistentDaemon(t *testing.T, sb integration.Sandbox) {
	s := newScenario(t, sb)
	s.seed(t, s.built, nil)
	_, err := s.c.Solve(sb.Context(), marshal(t, sb, s.built), client.SolveOpt{CacheImports: s.lazyImport()}, nil)
	require.NoError(t, err)

	for _, l := range s.mfst.Layers {
		require.NoError(t, os.Remove(blobPath(s.dir, l.Digest)))
	}
	out := t.TempDir()
	_, err = s.c.Solve(sb.Context(), marshal(t, sb, s.copySum()), client.SolveOpt{
		CacheImports: s.lazyImport(),
		Exports:      []client.ExportEntry{{Type: client.ExporterLocal, OutputDir: out}},
	}, nil)
	require.NoError(t, err)
	got, err := os.ReadFile(filepath.Join(out, "out-sum"))
	require.NoError(t, err)
	require.Equal(t, s.wantSum(), string(got))
}

// corruptInPlace flips bytes in the middle of a blob, keeping its size, and
// returns the original content.
func corruptInPlace(t *testing.T, path string) []byte {
	t.Helper()
	orig, err := os.ReadFile(path)
	require.NoError(t, err)
	bad := slices.Clone(orig)
	for i := len(bad) / 2; i < len(bad)/2+16 && i < len(bad); i++ {
		bad[i] ^= 0xff
	}
	require.NoError(t, os.Chmod(path, 0o644))
	require.NoError(t, os.WriteFile(path, bad, 0o644))
	return orig
}

// A blob corrupted in place fails the build that reads it; once the
// directory is repaired, the next build on the same daemon succeeds (a
// failed fetch leaves no complete ingest behind, series/02).
func testLazyCorruptBlob(t *testing.T, sb integration.Sandbox) {
	s := newScenario(t, sb)
	s.seed(t, s.built, nil)
	def := marshal(t, sb, s.copySum())

	// The last layer in the manifest is a generated one.
	victim := s.mfst.Layers[len(s.mfst.Layers)-1].Digest
	orig := corruptInPlace(t, blobPath(s.dir, victim))

	_, err := buildWithImport(sb.Context(), t, s.c, def, s.imports(true, newCountingStore(t, s.dir)))
	require.Error(t, err, "a build that reads a corrupt blob fails")
	require.ErrorContains(t, err, victim.String())

	require.NoError(t, os.WriteFile(blobPath(s.dir, victim), orig, 0o644))
	out := t.TempDir()
	o := s.imports(true, newCountingStore(t, s.dir))
	o.output = out
	_, err = buildWithImport(sb.Context(), t, s.c, def, o)
	require.NoError(t, err, "the build after the directory is repaired")
	got, err := os.ReadFile(filepath.Join(out, "out-sum"))
	require.NoError(t, err)
	require.Equal(t, s.wantSum(), string(got))
}

// A corrupt blob in the imported directory does not become a corrupt blob
// in the directory a lazy build exports to: the daemon's copy of it fails.
func testLazyExportCorruptBlob(t *testing.T, sb integration.Sandbox) {
	s := newScenario(t, sb)
	s.seed(t, s.built, nil)
	victim := s.mfst.Layers[len(s.mfst.Layers)-1].Digest
	corruptInPlace(t, blobPath(s.dir, victim))

	dir2 := filepath.Join(t.TempDir(), "cache-new")
	_, err := s.c.Solve(sb.Context(), marshal(t, sb, s.built), client.SolveOpt{
		CacheImports: s.lazyImport(),
		CacheExports: []client.CacheOptionsEntry{{Type: "local", Attrs: map[string]string{"dest": dir2, "mode": "max"}}},
	}, nil)
	require.Error(t, err, "exporting a corrupt imported blob fails")
	require.ErrorContains(t, err, victim.String())
	if got, err := os.ReadFile(blobPath(dir2, victim)); err == nil {
		require.Equal(t, victim, digest.FromBytes(got), "no corrupt blob in the new directory")
	}
}
