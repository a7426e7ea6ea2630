package client

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/moby/buildkit/client/llb"
	gw "github.com/moby/buildkit/frontend/gateway/client"
	"github.com/moby/buildkit/identity"
	"github.com/moby/buildkit/session"
	sessioncontent "github.com/moby/buildkit/session/content"
	"github.com/moby/buildkit/util/testutil"
	"github.com/moby/buildkit/util/testutil/cachetest"
	"github.com/moby/buildkit/util/testutil/integration"
	"github.com/moby/buildkit/util/testutil/workers"
	digest "github.com/opencontainers/go-digest"
	ocispecs "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/pkg/errors"
	"github.com/stretchr/testify/require"
	"github.com/tonistiigi/fsutil"
	"golang.org/x/sync/errgroup"
)

func init() {
	allTests = append(allTests, lazyLocalCacheTests...)
}

// lazyLocalCacheTests are the tests of lazy=true on the local cache
// importer, one behaviour each.
var lazyLocalCacheTests = []func(t *testing.T, sb integration.Sandbox){
	testLazyLocalCacheEagerStaysEager,
	testLazyLocalCacheAllCachedStaysLazy,
	testLazyLocalCacheLinkStaysLazy,
	testLazyLocalCacheMountedCorrect,
	testLazyLocalCacheSessionRebind,
	testLazyLocalCacheSessionGone,
	testLazyLocalCacheConcurrentSharedVertices,
	testLazyLocalCacheRoundTrip,
	testLazyLocalCacheInvalidAttr,
	testLazyLocalCacheDeletedBlob,
	testLazyLocalCacheCorruptBlob,
}

// scenario is a small base image (busybox and generated layers) in the
// sandbox's registry, a build on top of it whose cache was exported with
// mode=max to dir, and a daemon pruned back to empty, as a CI builder
// starts.
type scenario struct {
	c     *Client
	sb    integration.Sandbox
	files map[string][]byte
	// built is the base image with a RUN that writes /sum, the sha256sum
	// of the data files.
	built llb.State
	dir   string
	desc  ocispecs.Descriptor
	mfst  ocispecs.Manifest
}

const dataLayers = 3

func newScenario(t *testing.T, sb integration.Sandbox) *scenario {
	t.Helper()
	requiresLinux(t)
	workers.CheckFeatureCompat(t, sb, workers.FeatureCacheExport, workers.FeatureCacheImport, workers.FeatureCacheBackendLocal)
	c, err := New(sb.Context(), sb.Address())
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	registry, err := sb.NewRegistry()
	if errors.Is(err, integration.ErrRequirements) {
		t.Skip(err.Error())
	}
	require.NoError(t, err)

	ref := registry + "/lazy-local-cache/base-" + identity.NewID() + ":latest"
	layers := cachetest.SmallLayers(dataLayers, 256<<10)
	_, err = c.Solve(sb.Context(), marshal(t, sb, cachetest.Image(layers...)), SolveOpt{
		Exports: []ExportEntry{{Type: ExporterImage, Attrs: map[string]string{"name": ref, "push": "true"}}},
	}, nil)
	require.NoError(t, err)
	return &scenario{
		c:     c,
		sb:    sb,
		files: cachetest.Files(layers...),
		built: llb.Image(ref).Run(llb.Args([]string{"/bin/sh", "-c", "cat /data/* | sha256sum > /sum"}), llb.WithCustomName("checksum data")).Root(),
		dir:   filepath.Join(t.TempDir(), "cache"),
	}
}

// seed exports the cache of st to the scenario's directory with mode=max,
// and prunes the daemon back to empty.
func (s *scenario) seed(t *testing.T, st llb.State, locals map[string]fsutil.FS) {
	t.Helper()
	_, err := s.c.Solve(s.sb.Context(), marshal(t, s.sb, st), SolveOpt{
		LocalMounts:  locals,
		CacheExports: []CacheOptionsEntry{{Type: "local", Attrs: map[string]string{"dest": s.dir, "mode": "max"}}},
	}, nil)
	require.NoError(t, err)
	s.desc, s.mfst = cachetest.Manifest(t, s.dir)
	ensurePruneAll(t, s.c, s.sb)
}

func (s *scenario) imports(lazy bool, store *cachetest.CountingStore) importOpts {
	o := importOpts{dir: s.dir, digest: s.desc.Digest, lazy: lazy}
	if store != nil {
		o.store = store
	}
	return o
}

// wantSum is what the scenario's RUN writes to /sum.
func (s *scenario) wantSum() string {
	h := sha256.New()
	for i := 1; i <= dataLayers; i++ {
		h.Write(s.files[fmt.Sprintf("/data/layer%d", i)])
	}
	return fmt.Sprintf("%x  -\n", h.Sum(nil))
}

func marshal(t *testing.T, sb integration.Sandbox, st llb.State) *llb.Definition {
	t.Helper()
	def, err := st.Marshal(sb.Context())
	require.NoError(t, err)
	return def
}

// Eager stays eager: a plain import into a fresh daemon pulls and extracts
// every imported layer while loading the cached step.
func testLazyLocalCacheEagerStaysEager(t *testing.T, sb integration.Sandbox) {
	s := newScenario(t, sb)
	s.seed(t, s.built, nil)

	store := cachetest.NewCountingStore(t, s.dir)
	p, err := buildWithImport(sb.Context(), t, s.c, marshal(t, sb, s.built), s.imports(false, store))
	require.NoError(t, err)
	require.Empty(t, p.Uncached(), "every step comes from the imported cache")
	require.Len(t, p.Extracted(), len(s.mfst.Layers), "eager import extracts each imported layer")
	require.Len(t, store.LayerReads(s.mfst), len(s.mfst.Layers))
}

// Lazy stays lazy: a rebuild whose steps are all cached extracts nothing and
// reads no layer blob from the cache directory.
func testLazyLocalCacheAllCachedStaysLazy(t *testing.T, sb integration.Sandbox) {
	s := newScenario(t, sb)
	s.seed(t, s.built, nil)

	store := cachetest.NewCountingStore(t, s.dir)
	p, err := buildWithImport(sb.Context(), t, s.c, marshal(t, sb, s.built), s.imports(true, store))
	require.NoError(t, err)
	require.Empty(t, p.Uncached(), "every step comes from the imported cache")
	require.Empty(t, p.Extracted())
	require.Empty(t, store.LayerReads(s.mfst), "no layer blob is pulled into the daemon")
}

// The same when the changed step is COPY --link: the copy lands on scratch
// and is merged, so nothing mounts the lazily imported parent.
func testLazyLocalCacheLinkStaysLazy(t *testing.T, sb integration.Sandbox) {
	s := newScenario(t, sb)
	src := t.TempDir()
	linked := func() (llb.State, map[string]fsutil.FS) {
		fs, err := fsutil.NewFS(src)
		require.NoError(t, err)
		cp := llb.Scratch().File(llb.Copy(llb.Local("src"), "app.txt", "/app/app.txt", &llb.CopyInfo{CreateDestPath: true}))
		return llb.Merge([]llb.State{s.built, cp}), map[string]fsutil.FS{"src": fs}
	}
	require.NoError(t, os.WriteFile(filepath.Join(src, "app.txt"), []byte("v1"), 0o644))
	st, locals := linked()
	s.seed(t, st, locals)

	require.NoError(t, os.WriteFile(filepath.Join(src, "app.txt"), []byte("v2"), 0o644))
	st, locals = linked()
	store := cachetest.NewCountingStore(t, s.dir)
	o := s.imports(true, store)
	o.locals = locals
	p, err := buildWithImport(sb.Context(), t, s.c, marshal(t, sb, st), o)
	require.NoError(t, err)
	require.NotEmpty(t, p.Uncached(), "the changed copy runs")
	require.Empty(t, p.Extracted())
	require.Empty(t, store.LayerReads(s.mfst))
}

// Lazy is correct when mounted: an uncached RUN on top of lazily imported
// layers sees exactly their files, and an OCI export of the result carries
// the imported layers as they are in the cache, plus the new one.
func testLazyLocalCacheMountedCorrect(t *testing.T, sb integration.Sandbox) {
	s := newScenario(t, sb)
	s.seed(t, s.built, nil)

	st := s.built.Run(llb.Args([]string{"/bin/sh", "-c", "sha256sum /data/* > /sums; cat /sum >> /sums"}), llb.IgnoreCache).Root()
	out := t.TempDir()
	ociTar := filepath.Join(t.TempDir(), "image.tar")
	store := cachetest.NewCountingStore(t, s.dir)
	o := s.imports(true, store)
	o.output, o.oci = out, ociTar
	p, err := buildWithImport(sb.Context(), t, s.c, marshal(t, sb, st), o)
	require.NoError(t, err)
	require.NotEmpty(t, p.Extracted(), "the RUN mounts the imported layers")

	var want strings.Builder
	for i := 1; i <= dataLayers; i++ {
		f := fmt.Sprintf("/data/layer%d", i)
		fmt.Fprintf(&want, "%x  %s\n", sha256.Sum256(s.files[f]), f)
	}
	want.WriteString(s.wantSum())
	got, err := os.ReadFile(filepath.Join(out, "sums"))
	require.NoError(t, err)
	require.Equal(t, want.String(), string(got))
	for f, dt := range s.files {
		got, err := os.ReadFile(filepath.Join(out, f))
		require.NoError(t, err)
		require.Equal(t, dt, got, f)
	}

	layers := cachetest.OCILayers(t, ociTar)
	require.Len(t, layers, len(s.mfst.Layers)+1)
	for _, l := range layers[:len(layers)-1] {
		_, err := os.Stat(cachetest.BlobPath(s.dir, l.Digest))
		require.NoError(t, err, "exported layer %s is the imported blob", l.Digest)
	}
}

// delayServer holds HTTP requests to /delay until released, so a build can
// be made to wait at a known point.
type delayServer struct {
	*httptest.Server
	started  chan struct{}
	release  chan struct{}
	startOne sync.Once
	relOne   sync.Once
}

func newDelayServer(t *testing.T) *delayServer {
	d := &delayServer{started: make(chan struct{}), release: make(chan struct{})}
	d.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		d.startOne.Do(func() { close(d.started) })
		select {
		case <-d.release:
			_, _ = w.Write([]byte("ready\n"))
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(func() { d.Release(); d.Close() })
	return d
}

func (d *delayServer) Release() { d.relOne.Do(func() { close(d.release) }) }

func (d *delayServer) State() llb.State {
	return llb.HTTP(d.URL+"/delay", llb.Filename("delay"), llb.IgnoreCache)
}

// runAThenB models linked builds: build A imports the cache lazily, exposes
// its result and waits; build B starts from A's state behind a delayed
// source, so B reads the lazily imported layer only after A has ended and
// its session has closed. bImports says whether B imports the directory.
func runAThenB(t *testing.T, sb integration.Sandbox, bImports bool) (out string, bErr error) {
	ctx, cancel := context.WithTimeoutCause(sb.Context(), 2*time.Minute, errors.New("session rebind test timed out"))
	defer cancel()
	s := newScenario(t, sb)
	payload := cachetest.Data("payload", 512<<10)
	ctxDir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(ctxDir, "payload"), payload, 0o644))
	fs, err := fsutil.NewFS(ctxDir)
	require.NoError(t, err)
	locals := map[string]fsutil.FS{"context": fs}
	base := llb.Scratch().File(llb.Copy(llb.Local("context"), "payload", "/payload"))
	s.seed(t, base, locals)

	stateFromA := make(chan llb.State, 1)
	releaseA := make(chan struct{})
	var releaseOnce sync.Once
	t.Cleanup(func() { releaseOnce.Do(func() { close(releaseA) }) })
	aDone := make(chan error, 1)
	storeA := cachetest.NewCountingStore(t, s.dir)
	go func() {
		o := s.imports(true, storeA)
		o.locals = locals
		_, err := s.c.Build(ctx, o.solveOpt(t), "lazy-local-cache-a", func(ctx context.Context, gc gw.Client) (*gw.Result, error) {
			res, err := gc.Solve(ctx, gw.SolveRequest{Definition: marshal(t, sb, base).ToPB(), CacheImports: o.cacheImports(), Evaluate: true})
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
		require.NoError(t, err)
		t.Fatal("build A ended before exposing its state")
	}
	require.Empty(t, storeA.LayerReads(s.mfst), "build A loaded the record lazily")

	delay := newDelayServer(t)
	out = t.TempDir()
	bDone := make(chan error, 1)
	storeB := cachetest.NewCountingStore(t, s.dir)
	go func() {
		o := importOpts{output: out}
		if bImports {
			o = s.imports(true, storeB)
			o.output = out
		}
		_, err := s.c.Build(ctx, o.solveOpt(t), "lazy-local-cache-b", func(ctx context.Context, gc gw.Client) (*gw.Result, error) {
			merged := llb.Merge([]llb.State{stateA, delay.State()})
			st := llb.Scratch().File(llb.Copy(merged, "/payload", "/copied"))
			def, err := st.Marshal(ctx)
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

	select {
	case <-delay.started:
	case err := <-bDone:
		require.NoError(t, err)
		t.Fatal("build B ended before reaching the delayed source")
	}
	releaseOnce.Do(func() { close(releaseA) })
	require.NoError(t, <-aDone)
	delay.Release()

	select {
	case bErr = <-bDone:
	case <-ctx.Done():
		t.Fatal("build B hangs after build A ended")
	}
	if bErr == nil {
		got, err := os.ReadFile(filepath.Join(out, "copied"))
		require.NoError(t, err)
		require.Equal(t, payload, got)
		if bImports {
			require.NotEmpty(t, storeB.LayerReads(s.mfst), "B read the layer through its own session")
		}
	}
	require.Empty(t, storeA.LayerReads(s.mfst), "nothing was read through A's session")
	return out, bErr
}

// The session objection: B reuses A's lazily loaded record after A ended,
// and must succeed through its own session serving the same directory.
func testLazyLocalCacheSessionRebind(t *testing.T, sb integration.Sandbox) {
	_, err := runAThenB(t, sb, true)
	require.NoError(t, err)
}

// B imports nothing: it may run the step again or fail with the importer's
// error, but
// never hang and never fail with gRPC's "the client connection is closing".
func testLazyLocalCacheSessionGone(t *testing.T, sb integration.Sandbox) {
	_, err := runAThenB(t, sb, false)
	if err != nil {
		require.NotContains(t, err.Error(), "client connection is closing")
		require.ErrorContains(t, err, "no active session of this build serves the cache directory")
		require.ErrorContains(t, err, "import the same directory in this build")
	}
}

// Concurrent builds sharing vertices, as linked bake targets do: the
// importing build finishes first, the other mounts the shared record later.
func testLazyLocalCacheConcurrentSharedVertices(t *testing.T, sb integration.Sandbox) {
	s := newScenario(t, sb)
	s.seed(t, s.built, nil)
	for i := range 3 {
		if i > 0 {
			ensurePruneAll(t, s.c, sb)
		}
		delay := newDelayServer(t)
		out := t.TempDir()
		var eg errgroup.Group
		eg.Go(func() error {
			defer delay.Release()
			_, err := buildWithImport(sb.Context(), t, s.c, marshal(t, sb, s.built), s.imports(true, cachetest.NewCountingStore(t, s.dir)))
			return errors.Wrap(err, "importing build")
		})
		eg.Go(func() error {
			st := llb.Merge([]llb.State{s.built, delay.State()}).
				Run(llb.Args([]string{"/bin/sh", "-c", "cp /sum /out-sum"}), llb.IgnoreCache).Root()
			o := s.imports(true, cachetest.NewCountingStore(t, s.dir))
			o.output = out
			_, err := buildWithImport(sb.Context(), t, s.c, marshal(t, sb, st), o)
			return errors.Wrap(err, "dependent build")
		})
		require.NoError(t, eg.Wait(), "round %d", i)
		got, err := os.ReadFile(filepath.Join(out, "out-sum"))
		require.NoError(t, err)
		require.Equal(t, s.wantSum(), string(got), "round %d", i)
	}
}

// Round trip: a lazy import from dir plus a mode=max export to a new
// directory writes every blob the new index references, including layers
// never pulled into the daemon, and a fresh daemon importing the new
// directory finds every step cached. Exporting back into the same directory
// keeps it valid too.
func testLazyLocalCacheRoundTrip(t *testing.T, sb integration.Sandbox) {
	s := newScenario(t, sb)
	s.seed(t, s.built, nil)
	def := marshal(t, sb, s.built)

	for _, dest := range []string{filepath.Join(t.TempDir(), "cache2"), s.dir} {
		_, err := s.c.Solve(sb.Context(), def, SolveOpt{
			CacheImports: []CacheOptionsEntry{{Type: "local", Attrs: map[string]string{"src": s.dir, "lazy": "true"}}},
			CacheExports: []CacheOptionsEntry{{Type: "local", Attrs: map[string]string{"dest": dest, "mode": "max"}}},
		}, nil)
		require.NoError(t, err, "export to %s", dest)
		m := cachetest.RequireComplete(t, dest)
		for _, l := range s.mfst.Layers {
			require.True(t, slices.ContainsFunc(m.Layers, func(d ocispecs.Descriptor) bool { return d.Digest == l.Digest }), "layer %s kept in %s", l.Digest, dest)
		}

		ensurePruneAll(t, s.c, sb)
		desc, _ := cachetest.Manifest(t, dest)
		store := cachetest.NewCountingStore(t, dest)
		p, err := buildWithImport(sb.Context(), t, s.c, def, importOpts{dir: dest, digest: desc.Digest, lazy: true, store: store})
		require.NoError(t, err)
		require.Empty(t, p.Uncached(), "fresh daemon importing %s is fully cached", dest)
		require.Empty(t, p.Extracted())
		ensurePruneAll(t, s.c, sb)
	}
}

// An invalid lazy value fails the import with an error naming the
// attribute and the value. The solver builds on without a cache it could
// not import, as for any importer error, and reports it on the import.
func testLazyLocalCacheInvalidAttr(t *testing.T, sb integration.Sandbox) {
	s := newScenario(t, sb)
	s.seed(t, s.built, nil)
	ch, p, wait := watchProgress()
	_, err := s.c.Solve(sb.Context(), marshal(t, sb, s.built), SolveOpt{
		CacheImports: []CacheOptionsEntry{{Type: "local", Attrs: map[string]string{"src": s.dir, "lazy": "maybe"}}},
	}, ch)
	require.NoError(t, err)
	wait()
	errs := p.ImportErrors()
	require.Len(t, errs, 1)
	require.Contains(t, errs[0], `failed to configure local cache importer: failed to parse lazy: strconv.ParseBool: parsing "maybe": invalid syntax`)
	require.Contains(t, p.Uncached(), "checksum data", "nothing was imported")
}

// A layer blob deleted from the cache directory after export: lazy import
// stays best effort, as eager import is (testCacheExportCacheDeletedContent):
// the build succeeds, the step whose
// layer is gone runs again where it is needed, and a new mode=max export
// references no missing blob.
func testLazyLocalCacheDeletedBlob(t *testing.T, sb integration.Sandbox) {
	s := newScenario(t, sb)
	base := s.built.Run(llb.Args([]string{"/bin/sh", "-c", "echo abc-def > /foo && echo abc > /detection-file"}), llb.WithCustomName("detection run")).Root()
	final := llb.Scratch().File(llb.Copy(base, "/foo", "/out"))
	s.seed(t, final, nil)

	var runLayer digest.Digest
	for _, l := range s.mfst.Layers {
		dt, err := os.ReadFile(cachetest.BlobPath(s.dir, l.Digest))
		require.NoError(t, err)
		m, err := testutil.ReadTarToMap(dt, true)
		require.NoError(t, err)
		if _, ok := m["detection-file"]; ok {
			require.Empty(t, runLayer, "one layer holds detection-file")
			runLayer = l.Digest
		}
	}
	require.NotEmpty(t, runLayer)
	require.NoError(t, os.Remove(cachetest.BlobPath(s.dir, runLayer)))

	dir2 := filepath.Join(t.TempDir(), "cache2")
	_, err := s.c.Solve(sb.Context(), marshal(t, sb, final), SolveOpt{
		CacheImports: []CacheOptionsEntry{{Type: "local", Attrs: map[string]string{"src": s.dir, "lazy": "true"}}},
		CacheExports: []CacheOptionsEntry{{Type: "local", Attrs: map[string]string{"dest": dir2, "mode": "max"}}},
	}, nil)
	require.NoError(t, err)
	m := cachetest.RequireComplete(t, dir2)
	require.False(t, slices.ContainsFunc(m.Layers, func(d ocispecs.Descriptor) bool { return d.Digest == runLayer }))

	// A build that needs the missing layer runs its step again.
	ensurePruneAll(t, s.c, sb)
	out := t.TempDir()
	ch, p, wait := watchProgress()
	_, err = s.c.Solve(sb.Context(), marshal(t, sb, base), SolveOpt{
		CacheImports: []CacheOptionsEntry{{Type: "local", Attrs: map[string]string{"src": s.dir, "lazy": "true"}}},
		Exports:      []ExportEntry{{Type: ExporterLocal, OutputDir: out}},
	}, ch)
	require.NoError(t, err)
	wait()
	require.Contains(t, p.Uncached(), "detection run")
	got, err := os.ReadFile(filepath.Join(out, "detection-file"))
	require.NoError(t, err)
	require.Equal(t, "abc\n", string(got))
	// Dropping the records left no ref in use behind.
	ensurePruneAll(t, s.c, sb)
}

// A blob corrupted in place fails the build that needs it with an error
// naming the cache directory, and leaves nothing behind that breaks the
// next build on the same daemon.
func testLazyLocalCacheCorruptBlob(t *testing.T, sb integration.Sandbox) {
	s := newScenario(t, sb)
	s.seed(t, s.built, nil)
	st := s.built.Run(llb.Args([]string{"/bin/sh", "-c", "cp /sum /out-sum"}), llb.IgnoreCache).Root()
	def := marshal(t, sb, st)

	// The last layer in the manifest is a generated one; flip its bytes in the
	// middle of the compressed stream, keeping the size.
	victim := cachetest.BlobPath(s.dir, s.mfst.Layers[len(s.mfst.Layers)-1].Digest)
	orig, err := os.ReadFile(victim)
	require.NoError(t, err)
	bad := slices.Clone(orig)
	for i := len(bad) / 2; i < len(bad)/2+16 && i < len(bad); i++ {
		bad[i] ^= 0xff
	}
	require.NoError(t, os.WriteFile(victim, bad, 0o644))

	_, err = buildWithImport(sb.Context(), t, s.c, def, s.imports(true, cachetest.NewCountingStore(t, s.dir)))
	require.Error(t, err)
	require.ErrorContains(t, err, "local cache "+s.dir+": blob ")
	require.ErrorContains(t, err, "is corrupt")

	require.NoError(t, os.WriteFile(victim, orig, 0o644))
	out := t.TempDir()
	o := s.imports(true, cachetest.NewCountingStore(t, s.dir))
	o.output = out
	_, err = buildWithImport(sb.Context(), t, s.c, def, o)
	require.NoError(t, err, "a good build after the failed one")
	got, err := os.ReadFile(filepath.Join(out, "out-sum"))
	require.NoError(t, err)
	require.Equal(t, s.wantSum(), string(got))
}

// importOpts is one build importing a cache directory through a session
// that serves it from store (nil: the session serves no directory).
type importOpts struct {
	dir    string
	digest digest.Digest
	lazy   bool
	store  content.Store
	locals map[string]fsutil.FS
	// output, when set, exports the result to this directory.
	output string
	// oci, when set, exports the result as an OCI layout tarball.
	oci string
}

func (o importOpts) cacheImports() []gw.CacheOptionsEntry {
	attrs := map[string]string{"src": o.dir, "digest": o.digest.String()}
	if o.lazy {
		attrs["lazy"] = "true"
	}
	return []gw.CacheOptionsEntry{{Type: "local", Attrs: attrs}}
}

func (o importOpts) solveOpt(t *testing.T) SolveOpt {
	opt := SolveOpt{LocalMounts: o.locals}
	if o.store != nil {
		opt.Session = []session.Attachable{sessioncontent.NewAttachable(map[string]content.Store{"local:" + o.dir: o.store})}
	}
	if o.output != "" {
		opt.Exports = append(opt.Exports, ExportEntry{Type: ExporterLocal, OutputDir: o.output})
	}
	if o.oci != "" {
		f, err := os.Create(o.oci)
		require.NoError(t, err)
		opt.Exports = append(opt.Exports, ExportEntry{
			Type:   ExporterOCI,
			Output: func(map[string]string) (io.WriteCloser, error) { return f, nil },
		})
	}
	return opt
}

// buildWithImport solves def in a gateway build that imports the cache as o
// says, and returns what the client saw of its progress.
func buildWithImport(ctx context.Context, t *testing.T, c *Client, def *llb.Definition, o importOpts) (*cachetest.Progress, error) {
	t.Helper()
	ch, p, wait := watchProgress()
	_, err := c.Build(ctx, o.solveOpt(t), "lazy-local-cache-test", func(ctx context.Context, gc gw.Client) (*gw.Result, error) {
		return gc.Solve(ctx, gw.SolveRequest{
			Definition:   def.ToPB(),
			CacheImports: o.cacheImports(),
			Evaluate:     true,
		})
	}, ch)
	wait()
	return p, err
}

// watchProgress returns a status channel for a solve, the Progress it
// feeds, and a function that waits until the solve has closed the channel.
func watchProgress() (chan *SolveStatus, *cachetest.Progress, func()) {
	ch := make(chan *SolveStatus)
	p := cachetest.NewProgress()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for st := range ch {
			for _, v := range st.Vertexes {
				p.AddVertex(v.Digest.String(), cachetest.Vertex{Name: v.Name, Cached: v.Cached, Completed: v.Completed != nil, Error: v.Error})
			}
			for _, vs := range st.Statuses {
				p.AddStatus(vs.ID)
			}
		}
	}()
	return ch, p, func() { <-done }
}
