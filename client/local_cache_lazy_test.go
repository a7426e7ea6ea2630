package client

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	contentlocal "github.com/containerd/containerd/v2/plugins/content/local"
	"github.com/moby/buildkit/client/llb"
	gw "github.com/moby/buildkit/frontend/gateway/client"
	"github.com/moby/buildkit/session"
	sessioncontent "github.com/moby/buildkit/session/content"
	"github.com/moby/buildkit/util/testutil/integration"
	"github.com/moby/buildkit/util/testutil/workers"
	digest "github.com/opencontainers/go-digest"
	ocispecs "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/stretchr/testify/require"
	"github.com/tonistiigi/fsutil"
)

// testLazyLocalCacheImport checks that a build whose steps are all cached
// reads no layer blob from a cache directory imported with lazy=true, and
// that exporting the cache reads them all.
func testLazyLocalCacheImport(t *testing.T, sb integration.Sandbox) {
	c, lc := newLazyLocalCache(t, sb)
	reads := map[digest.Digest]int{}
	_, err := c.Build(sb.Context(), SolveOpt{LocalMounts: lc.locals, Session: lc.serve(t, reads)}, "", lc.solve(nil), nil)
	require.NoError(t, err)
	require.Positive(t, reads[lc.manifest])
	for _, l := range lc.layers {
		require.Zero(t, reads[l], "layer %s was read", l)
	}

	dest := filepath.Join(t.TempDir(), "cache2")
	_, err = c.Solve(sb.Context(), lc.def, SolveOpt{
		LocalMounts:  lc.locals,
		CacheImports: []CacheOptionsEntry{{Type: "local", Attrs: map[string]string{"src": lc.dir, "lazy": "true"}}},
		CacheExports: []CacheOptionsEntry{{Type: "local", Attrs: map[string]string{"dest": dest, "mode": "max"}}},
	}, nil)
	require.NoError(t, err)

	_, layers := readLocalCacheManifest(t, dest)
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
	for _, tc := range []struct{ bImports, aEnds bool }{{true, true}, {false, true}, {false, false}} {
		c, lc := newLazyLocalCache(t, sb)
		delayed, started, releaseB := newDelayedSource(t)

		stateFromA, releaseA, aDone := make(chan llb.State, 1), make(chan struct{}), make(chan error, 1)
		endA := sync.OnceFunc(func() { close(releaseA) })
		t.Cleanup(endA)
		go func() {
			_, err := c.Build(sb.Context(), SolveOpt{LocalMounts: lc.locals, Session: lc.serve(t, nil)}, "", lc.solve(func(st llb.State) {
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
		}

		opt := SolveOpt{Exports: []ExportEntry{{Type: ExporterLocal, OutputDir: t.TempDir()}}}
		if tc.bImports {
			opt.Session = lc.serve(t, nil)
		}
		bDone := make(chan error, 1)
		go func() {
			_, err := c.Build(sb.Context(), opt, "", func(ctx context.Context, c gw.Client) (*gw.Result, error) {
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
		}
		if tc.aEnds {
			endA()
			require.NoError(t, <-aDone)
		}
		releaseB()
		err := <-bDone
		if !tc.aEnds {
			endA()
			require.NoError(t, <-aDone)
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

// lazyLocalCache is a cache directory exported with mode=max from a copy
// of a local file, with the daemon pruned afterwards.
type lazyLocalCache struct {
	dir      string
	manifest digest.Digest
	layers   []digest.Digest
	payload  []byte
	locals   map[string]fsutil.FS
	def      *llb.Definition
}

func newLazyLocalCache(t *testing.T, sb integration.Sandbox) (*Client, *lazyLocalCache) {
	integration.SkipOnPlatform(t, "windows")
	workers.CheckFeatureCompat(t, sb, workers.FeatureCacheExport, workers.FeatureCacheImport, workers.FeatureCacheBackendLocal)
	c, err := New(sb.Context(), sb.Address())
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })

	lc := &lazyLocalCache{dir: filepath.Join(t.TempDir(), "cache"), payload: bytes.Repeat([]byte("lazy local cache\n"), 4<<10)}
	contextDir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(contextDir, "payload"), lc.payload, 0o644))
	fs, err := fsutil.NewFS(contextDir)
	require.NoError(t, err)
	lc.locals = map[string]fsutil.FS{"context": fs}
	lc.def, err = llb.Scratch().File(llb.Copy(llb.Local("context"), "payload", "/payload")).Marshal(sb.Context())
	require.NoError(t, err)
	_, err = c.Solve(sb.Context(), lc.def, SolveOpt{
		LocalMounts:  lc.locals,
		CacheExports: []CacheOptionsEntry{{Type: "local", Attrs: map[string]string{"dest": lc.dir, "mode": "max"}}},
	}, nil)
	require.NoError(t, err)
	lc.manifest, lc.layers = readLocalCacheManifest(t, lc.dir)
	require.NotEmpty(t, lc.layers)
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
// an import, and counts the reads of each blob in reads, if set.
func (lc *lazyLocalCache) serve(t *testing.T, reads map[digest.Digest]int) []session.Attachable {
	cs, err := contentlocal.NewStore(lc.dir)
	require.NoError(t, err)
	store := content.Store(cs)
	if reads != nil {
		store = &readCountingStore{Store: cs, reads: reads}
	}
	return []session.Attachable{sessioncontent.NewAttachable(map[string]content.Store{"local:" + lc.dir: store})}
}

type readCountingStore struct {
	content.Store
	mu    sync.Mutex
	reads map[digest.Digest]int
}

func (s *readCountingStore) ReaderAt(ctx context.Context, desc ocispecs.Descriptor) (content.ReaderAt, error) {
	s.mu.Lock()
	s.reads[desc.Digest]++
	s.mu.Unlock()
	return s.Store.ReaderAt(ctx, desc)
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
