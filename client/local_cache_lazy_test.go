package client

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	contentlocal "github.com/containerd/containerd/v2/plugins/content/local"
	"github.com/moby/buildkit/client/llb"
	gw "github.com/moby/buildkit/frontend/gateway/client"
	"github.com/moby/buildkit/session"
	sessioncontent "github.com/moby/buildkit/session/content"
	"github.com/moby/buildkit/session/filesync"
	"github.com/moby/buildkit/util/testutil/integration"
	"github.com/moby/buildkit/util/testutil/workers"
	digest "github.com/opencontainers/go-digest"
	ocispecs "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/pkg/errors"
	"github.com/stretchr/testify/require"
	"github.com/tonistiigi/fsutil"
)

// testLazyLocalCacheImport checks that a build whose steps are all cached
// reads no layer blob from a cache directory imported with lazy=true, and
// that a build that imports it lazily and exports the cache with mode=max
// writes every layer and asks the client for each blob's info once.
func testLazyLocalCacheImport(t *testing.T, sb integration.Sandbox) {
	c, lc := newLazyLocalCache(t, sb, 3)
	counts := newBlobCounts()
	_, err := c.Build(sb.Context(), SolveOpt{LocalMounts: lc.locals, Session: lc.serve(t, counts)}, "", lc.solve(nil), nil)
	require.NoError(t, err)
	require.Positive(t, counts.reads[lc.manifest])
	for _, l := range lc.layers {
		require.Zero(t, counts.reads[l], "layer %s was read", l)
	}

	// Exported back into the directory, every layer is there already: the
	// export reads none. The exporter asks for the info of each layer of
	// each record's chain; the client is asked once per layer.
	counts = newBlobCounts()
	lc.solveServing(t, c, sb, counts, SolveOpt{
		CacheImports: []CacheOptionsEntry{{Type: "local", Attrs: map[string]string{"src": lc.dir, "lazy": "true"}}},
		CacheExports: []CacheOptionsEntry{{Type: "local", Attrs: map[string]string{"dest": lc.dir, "mode": "max"}}},
	})
	_, layers := readLocalCacheManifest(t, lc.dir)
	require.Equal(t, lc.layers, layers)
	for _, l := range lc.layers {
		require.Zero(t, counts.reads[l], "layer %s was read", l)
		require.Equal(t, 1, counts.infos[l], "info of layer %s", l)
	}

	// Exported to a new directory, every layer is read and written there.
	dest := filepath.Join(t.TempDir(), "cache2")
	_, err = c.Solve(sb.Context(), lc.def, SolveOpt{
		LocalMounts:  lc.locals,
		CacheImports: []CacheOptionsEntry{{Type: "local", Attrs: map[string]string{"src": lc.dir, "lazy": "true"}}},
		CacheExports: []CacheOptionsEntry{{Type: "local", Attrs: map[string]string{"dest": dest, "mode": "max"}}},
	}, nil)
	require.NoError(t, err)
	_, layers = readLocalCacheManifest(t, dest)
	require.Equal(t, lc.layers, layers)
	for _, l := range layers {
		dt, err := os.ReadFile(filepath.Join(dest, "blobs", l.Algorithm().String(), l.Encoded()))
		require.NoError(t, err)
		require.Equal(t, l, digest.FromBytes(dt))
	}
}

// testLazyLocalCacheImportSessionRebind mirrors
// testRegistryCacheImportSessionRebind: build B mounts a layer that build A
// imported lazily. B reads it through its own session when it imports the
// same directory, after A and its session have ended, and fails when it
// does not, even while A's session is alive.
func testLazyLocalCacheImportSessionRebind(t *testing.T, sb integration.Sandbox) {
	workers.CheckFeatureCompat(t, sb, workers.FeatureMergeDiff)
	ctx, cancel := context.WithTimeoutCause(sb.Context(), 2*time.Minute, errors.New("lazy local cache session rebind test timed out"))
	defer cancel()
	for _, tc := range []struct{ bImports, aEnds bool }{{true, true}, {false, true}, {false, false}} {
		c, lc := newLazyLocalCache(t, sb, 1)
		delayed, started, releaseB := newDelayedSource(t)

		stateFromA, releaseA, aDone := make(chan llb.State, 1), make(chan struct{}), make(chan error, 1)
		endA := sync.OnceFunc(func() { close(releaseA) })
		t.Cleanup(endA)
		go func() {
			_, err := c.Build(ctx, SolveOpt{LocalMounts: lc.locals, Session: lc.serve(t, nil)}, "", lc.solve(func(st llb.State) {
				stateFromA <- st
				<-releaseA
			}), nil)
			aDone <- err
		}()
		var stateA llb.State
		select {
		case stateA = <-stateFromA:
		case err := <-aDone:
			t.Fatalf("build A ended before exposing its state: %v", err)
		case <-ctx.Done():
			t.Fatal(context.Cause(ctx))
		}

		opt := SolveOpt{Exports: []ExportEntry{{Type: ExporterLocal, OutputDir: t.TempDir()}}}
		if tc.bImports {
			opt.Session = lc.serve(t, nil)
		}
		bDone := make(chan error, 1)
		go func() {
			_, err := c.Build(ctx, opt, "", func(ctx context.Context, c gw.Client) (*gw.Result, error) {
				merged := llb.Merge([]llb.State{stateA, delayed})
				def, err := llb.Scratch().File(llb.Copy(merged, "/payload", "/copied")).Marshal(ctx)
				if err != nil {
					return nil, err
				}
				return c.Solve(ctx, gw.SolveRequest{Evaluate: true, Definition: def.ToPB()})
			}, nil)
			bDone <- err
		}()

		// B has loaded A's state: end A, or not, then let B read the layer.
		select {
		case <-started:
		case err := <-bDone:
			t.Fatalf("build B ended before loading A's state: %v", err)
		case <-ctx.Done():
			t.Fatal(context.Cause(ctx))
		}
		if tc.aEnds {
			endA()
			require.NoError(t, receive(ctx, t, aDone))
		}
		releaseB()
		err := receive(ctx, t, bDone)
		if !tc.aEnds {
			endA()
			require.NoError(t, receive(ctx, t, aDone))
		}
		if !tc.bImports {
			require.ErrorContains(t, err, "failed to read blob "+lc.layers[0].String()+" from local cache "+lc.dir)
			continue
		}
		require.NoError(t, err)
		dt, err := os.ReadFile(filepath.Join(opt.Exports[0].OutputDir, "copied"))
		require.NoError(t, err)
		require.Equal(t, lc.payload, dt)
	}
}

// lazyLocalCache is a cache directory exported with mode=max from a chain
// of copies of local files, one layer each, with the daemon pruned
// afterwards.
type lazyLocalCache struct {
	dir      string
	manifest digest.Digest
	layers   []digest.Digest
	payload  []byte
	locals   map[string]fsutil.FS
	def      *llb.Definition
}

func newLazyLocalCache(t *testing.T, sb integration.Sandbox, n int) (*Client, *lazyLocalCache) {
	integration.SkipOnPlatform(t, "windows")
	workers.CheckFeatureCompat(t, sb, workers.FeatureCacheExport, workers.FeatureCacheImport, workers.FeatureCacheBackendLocal)
	c, err := New(sb.Context(), sb.Address())
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })

	lc := &lazyLocalCache{dir: filepath.Join(t.TempDir(), "cache"), payload: bytes.Repeat([]byte("lazy local cache\n"), 4<<10)}
	contextDir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(contextDir, "payload"), lc.payload, 0o644))
	st := llb.Scratch().File(llb.Copy(llb.Local("context"), "payload", "/payload"))
	for i := 1; i < n; i++ {
		name := fmt.Sprintf("file%d", i)
		require.NoError(t, os.WriteFile(filepath.Join(contextDir, name), []byte(name), 0o644))
		st = st.File(llb.Copy(llb.Local("context"), name, "/"+name))
	}
	fs, err := fsutil.NewFS(contextDir)
	require.NoError(t, err)
	lc.locals = map[string]fsutil.FS{"context": fs}
	lc.def, err = st.Marshal(sb.Context())
	require.NoError(t, err)
	_, err = c.Solve(sb.Context(), lc.def, SolveOpt{
		LocalMounts:  lc.locals,
		CacheExports: []CacheOptionsEntry{{Type: "local", Attrs: map[string]string{"dest": lc.dir, "mode": "max"}}},
	}, nil)
	require.NoError(t, err)
	lc.manifest, lc.layers = readLocalCacheManifest(t, lc.dir)
	require.Len(t, lc.layers, n)
	ensurePruneAll(t, c, sb)
	return c, lc
}

// solve imports the cache lazily in a gateway build of the cached
// definition, and passes the result to hold, if set, before returning.
func (lc *lazyLocalCache) solve(hold func(llb.State)) gw.BuildFunc {
	return func(ctx context.Context, c gw.Client) (*gw.Result, error) {
		res, err := c.Solve(ctx, gw.SolveRequest{
			Definition: lc.def.ToPB(),
			Evaluate:   true,
			CacheImports: []gw.CacheOptionsEntry{{Type: "local", Attrs: map[string]string{
				"src": lc.dir, "digest": lc.manifest.String(), "lazy": "true",
			}}},
		})
		if err != nil || hold == nil {
			return res, err
		}
		ref, err := res.SingleRef()
		if err != nil {
			return nil, err
		}
		st, err := ref.ToState()
		if err != nil {
			return nil, err
		}
		hold(st)
		return gw.NewResult(), nil
	}
}

// serve serves the cache directory to the daemon, as the client does for
// an import, and counts the requests for each blob in counts, if set.
func (lc *lazyLocalCache) serve(t *testing.T, counts *blobCounts) []session.Attachable {
	return []session.Attachable{sessioncontent.NewAttachable(map[string]content.Store{"local:" + lc.dir: lc.store(t, counts)})}
}

func (lc *lazyLocalCache) store(t *testing.T, counts *blobCounts) content.Store {
	cs, err := contentlocal.NewStore(lc.dir)
	require.NoError(t, err)
	if counts == nil {
		return cs
	}
	return &countingStore{Store: cs, blobCounts: counts}
}

// solveServing runs opt, whose cache options name lc.dir only, in a
// session of its own that serves the local context and lc.dir, counting
// the requests for each blob in counts.
func (lc *lazyLocalCache) solveServing(t *testing.T, c *Client, sb integration.Sandbox, counts *blobCounts, opt SolveOpt) {
	ctx, cancel := context.WithCancelCause(sb.Context())
	defer cancel(errors.WithStack(context.Canceled))
	s, err := session.NewSession(ctx, "")
	require.NoError(t, err)
	s.Allow(filesync.NewFSSyncProvider(filesync.StaticDirSource(lc.locals)))
	for _, a := range lc.serve(t, counts) {
		s.Allow(a)
	}
	go s.Run(ctx, c.Dialer())
	defer s.Close()
	opt.LocalMounts = lc.locals
	opt.SharedSession = s
	opt.SessionPreInitialized = true
	_, err = c.Solve(ctx, lc.def, opt, nil)
	require.NoError(t, err)
}

// blobCounts counts the reads and info requests of each blob.
type blobCounts struct {
	mu    sync.Mutex
	reads map[digest.Digest]int
	infos map[digest.Digest]int
}

func newBlobCounts() *blobCounts {
	return &blobCounts{reads: map[digest.Digest]int{}, infos: map[digest.Digest]int{}}
}

type countingStore struct {
	content.Store
	*blobCounts
}

func (s *countingStore) ReaderAt(ctx context.Context, desc ocispecs.Descriptor) (content.ReaderAt, error) {
	s.mu.Lock()
	s.reads[desc.Digest]++
	s.mu.Unlock()
	return s.Store.ReaderAt(ctx, desc)
}

func (s *countingStore) Info(ctx context.Context, dgst digest.Digest) (content.Info, error) {
	s.mu.Lock()
	s.infos[dgst]++
	s.mu.Unlock()
	return s.Store.Info(ctx, dgst)
}

func readLocalCacheManifest(t *testing.T, dir string) (digest.Digest, []digest.Digest) {
	var idx ocispecs.Index
	dt, err := os.ReadFile(filepath.Join(dir, "index.json"))
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(dt, &idx))
	require.Len(t, idx.Manifests, 1)
	var mfst ocispecs.Manifest
	dt, err = os.ReadFile(filepath.Join(dir, "blobs", "sha256", idx.Manifests[0].Digest.Encoded()))
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(dt, &mfst))
	var layers []digest.Digest
	for _, l := range mfst.Layers {
		layers = append(layers, l.Digest)
	}
	return idx.Manifests[0].Digest, layers
}

// receive waits for ch, or fails t when ctx ends first.
func receive(ctx context.Context, t *testing.T, ch <-chan error) error {
	select {
	case err := <-ch:
		return err
	case <-ctx.Done():
		t.Fatal(context.Cause(ctx))
		return nil
	}
}

// newDelayedSource returns an HTTP source that blocks until release is
// called, and a channel closed when the source is first requested.
func newDelayedSource(t *testing.T) (st llb.State, started <-chan struct{}, release func()) {
	start, done := make(chan struct{}), make(chan struct{})
	var once sync.Once
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		once.Do(func() { close(start) })
		select {
		case <-done:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(s.Close)
	release = sync.OnceFunc(func() { close(done) })
	// On a failed assertion, let the builds end before the server closes.
	t.Cleanup(release)
	return llb.HTTP(s.URL, llb.Filename("delay"), llb.IgnoreCache), start, release
}
