package lazytest

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
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
	contentlocal "github.com/containerd/containerd/v2/plugins/content/local"
	"github.com/moby/buildkit/client"
	"github.com/moby/buildkit/client/llb"
	gw "github.com/moby/buildkit/frontend/gateway/client"
	"github.com/moby/buildkit/identity"
	"github.com/moby/buildkit/session"
	sessioncontent "github.com/moby/buildkit/session/content"
	"github.com/moby/buildkit/util/testutil"
	"github.com/moby/buildkit/util/testutil/integration"
	"github.com/moby/buildkit/util/testutil/workers"
	digest "github.com/opencontainers/go-digest"
	ocispecs "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/stretchr/testify/require"
	"github.com/tonistiigi/fsutil"
)

// newClient connects to the sandbox's buildkitd after checking that it can
// export and import a local cache.
func newClient(t *testing.T, sb integration.Sandbox) *client.Client {
	t.Helper()
	workers.CheckFeatureCompat(t, sb, workers.FeatureCacheExport, workers.FeatureCacheImport, workers.FeatureCacheBackendLocal, workers.FeatureMergeDiff)
	c, err := client.New(sb.Context(), sb.Address())
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return c
}

// newRegistry starts the sandbox's registry. A missing registry binary fails
// the test: a skipped test proves nothing.
func newRegistry(t *testing.T, sb integration.Sandbox) string {
	t.Helper()
	r, err := sb.NewRegistry()
	require.NoError(t, err, "the tests push their base images to a local registry: apt-get install docker-registry and link it as bin/registry (make deps)")
	return r
}

// pruneAll prunes the daemon until it holds no cache record, so that the
// next build starts as a CI builder does, from an empty daemon.
func pruneAll(t *testing.T, c *client.Client, sb integration.Sandbox) {
	t.Helper()
	for range 3 {
		require.NoError(t, c.Prune(sb.Context(), nil, client.PruneAll))
		for range 20 {
			du, err := c.DiskUsage(sb.Context())
			require.NoError(t, err)
			if len(du) == 0 {
				return
			}
			time.Sleep(500 * time.Millisecond)
		}
	}
	t.Fatal("the daemon still holds cache records after pruning everything")
}

func marshal(t *testing.T, sb integration.Sandbox, st llb.State) *llb.Definition {
	t.Helper()
	def, err := st.Marshal(sb.Context())
	require.NoError(t, err)
	return def
}

// layer is the content of one generated layer: file contents by path.
type layer map[string][]byte

// data returns n bytes of deterministic, incompressible content for seed,
// so that layers have real sizes after compression and differ by seed.
func data(seed string, n int) []byte {
	out := make([]byte, 0, n+sha256.Size)
	var ctr [8]byte
	for i := uint64(0); len(out) < n; i++ {
		binary.LittleEndian.PutUint64(ctr[:], i)
		sum := sha256.Sum256(append([]byte(seed), ctr[:]...))
		out = append(out, sum[:]...)
	}
	return out[:n]
}

// smallLayers returns n layers of one file each, size bytes, under /data.
func smallLayers(n, size int) []layer {
	layers := make([]layer, n)
	for i := range layers {
		p := fmt.Sprintf("/data/layer%d", i+1)
		layers[i] = layer{p: data(p, size)}
	}
	return layers
}

// baseImage is busybox:latest plus one layer per element of layers.
func baseImage(layers ...layer) llb.State {
	st := llb.Image("busybox:latest")
	for i, l := range layers {
		var fa *llb.FileAction
		for _, p := range slices.Sorted(maps.Keys(l)) {
			if fa == nil {
				fa = llb.Mkdir(filepath.Dir(p), 0o755, llb.WithParents(true))
			} else {
				fa = fa.Mkdir(filepath.Dir(p), 0o755, llb.WithParents(true))
			}
			fa = fa.Mkfile(p, 0o644, l[p])
		}
		st = st.File(fa, llb.WithCustomNamef("generated layer %d", i+1))
	}
	return st
}

// flatten returns the files an image built from layers holds.
func flatten(layers ...layer) map[string][]byte {
	out := map[string][]byte{}
	for _, l := range layers {
		maps.Copy(out, l)
	}
	return out
}

// pushBase builds the base image of layers and pushes it to the sandbox's
// registry under a new name, which it returns.
func pushBase(t *testing.T, sb integration.Sandbox, c *client.Client, layers []layer) string {
	t.Helper()
	ref := newRegistry(t, sb) + "/lazytest/base-" + identity.NewID() + ":latest"
	_, err := c.Solve(sb.Context(), marshal(t, sb, baseImage(layers...)), client.SolveOpt{
		Exports: []client.ExportEntry{{Type: client.ExporterImage, Attrs: map[string]string{"name": ref, "push": "true"}}},
	}, nil)
	require.NoError(t, err)
	return ref
}

// cacheManifest returns the descriptor index.json of a cache directory
// points at, and the manifest itself.
func cacheManifest(t *testing.T, dir string) (ocispecs.Descriptor, ocispecs.Manifest) {
	t.Helper()
	dt, err := os.ReadFile(filepath.Join(dir, "index.json"))
	require.NoError(t, err)
	var idx ocispecs.Index
	require.NoError(t, json.Unmarshal(dt, &idx))
	require.Len(t, idx.Manifests, 1)
	dt, err = os.ReadFile(blobPath(dir, idx.Manifests[0].Digest))
	require.NoError(t, err)
	var m ocispecs.Manifest
	require.NoError(t, json.Unmarshal(dt, &m))
	return idx.Manifests[0], m
}

func blobPath(dir string, dgst digest.Digest) string {
	return filepath.Join(dir, "blobs", dgst.Algorithm().String(), dgst.Encoded())
}

// requireComplete checks that every blob the cache directory's index
// references is there with the right digest.
func requireComplete(t *testing.T, dir string) ocispecs.Manifest {
	t.Helper()
	_, m := cacheManifest(t, dir)
	for _, d := range append([]ocispecs.Descriptor{m.Config}, m.Layers...) {
		dt, err := os.ReadFile(blobPath(dir, d.Digest))
		require.NoError(t, err, "cache %s references blob %s", dir, d.Digest)
		require.Equal(t, d.Digest, digest.FromBytes(dt), "blob %s in %s", d.Digest, dir)
	}
	return m
}

func hasLayer(m ocispecs.Manifest, dgst digest.Digest) bool {
	return slices.ContainsFunc(m.Layers, func(d ocispecs.Descriptor) bool { return d.Digest == dgst })
}

// countingStore serves a cache directory to the daemon, as buildctl does,
// and records which blobs the daemon reads from it: a layer is pulled into
// the daemon, to be extracted or exported, only through such a read.
type countingStore struct {
	content.Store
	mu    sync.Mutex
	reads map[digest.Digest]int
}

var _ content.Store = &countingStore{}

func newCountingStore(t *testing.T, dir string) *countingStore {
	t.Helper()
	s, err := contentlocal.NewStore(dir)
	require.NoError(t, err)
	return &countingStore{Store: s, reads: map[digest.Digest]int{}}
}

func (s *countingStore) ReaderAt(ctx context.Context, desc ocispecs.Descriptor) (content.ReaderAt, error) {
	s.mu.Lock()
	s.reads[desc.Digest]++
	s.mu.Unlock()
	return s.Store.ReaderAt(ctx, desc)
}

// layerReads returns the layer blobs of the cache manifest m read so far.
func (s *countingStore) layerReads(m ocispecs.Manifest) []digest.Digest {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []digest.Digest
	for _, l := range m.Layers {
		if s.reads[l.Digest] > 0 {
			out = append(out, l.Digest)
		}
	}
	return out
}

// progress keeps what a build's status stream says about its steps, as the
// client sees it: which came from cache, which ran, which failed. It reads
// the statuses' fields, not their text, except extracted, which reads the
// "extracting sha256:..." status lines where no content store can tell
// (a build whose import the client serves itself).
type progress struct {
	mu         sync.Mutex
	extracting map[digest.Digest]struct{}
	vertices   map[digest.Digest]vertex
}

type vertex struct {
	name      string
	cached    bool
	completed bool
	err       string
}

// watch returns a status channel for a solve, the progress it feeds and a
// function that waits until the solve has closed the channel.
func watch() (chan *client.SolveStatus, *progress, func()) {
	ch := make(chan *client.SolveStatus)
	p := &progress{extracting: map[digest.Digest]struct{}{}, vertices: map[digest.Digest]vertex{}}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for st := range ch {
			p.mu.Lock()
			for _, v := range st.Vertexes {
				nv := vertex{name: v.Name, cached: v.Cached, completed: v.Completed != nil, err: v.Error}
				// Pulling a lazily imported layer of a cached step reports
				// the step again, without the flag. A cached report with an
				// error is a cache load that failed (a missing blob): the
				// step runs after it.
				if prev, ok := p.vertices[v.Digest]; ok && prev.cached && prev.err == "" {
					nv.cached = true
				}
				p.vertices[v.Digest] = nv
			}
			for _, vs := range st.Statuses {
				if d, ok := strings.CutPrefix(vs.ID, "extracting "); ok {
					p.extracting[digest.Digest(d)] = struct{}{}
				}
			}
			p.mu.Unlock()
		}
	}()
	return ch, p, func() { <-done }
}

// importErrors lists the errors of cache imports: the solver builds on
// without a cache it could not import and reports why on this vertex.
func (p *progress) importErrors() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []string
	for _, v := range p.vertices {
		if strings.HasPrefix(v.name, "importing cache manifest") && v.err != "" {
			out = append(out, v.err)
		}
	}
	return out
}

// uncached lists the names of the steps that ran instead of coming from
// cache. Resolving an image and reading the cache manifest are not steps.
func (p *progress) uncached() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []string
	for _, v := range p.vertices {
		if strings.HasPrefix(v.name, "docker-image://") || strings.HasPrefix(v.name, "importing cache manifest") || strings.HasPrefix(v.name, "[internal]") {
			continue
		}
		if !v.cached && v.completed && v.err == "" {
			out = append(out, v.name)
		}
	}
	slices.Sort(out)
	return out
}

// cached reports whether the step named name, or else the one step whose
// name contains it, came from cache; it fails the test when no step or more
// than one has that name.
func (p *progress) cached(t *testing.T, name string) bool {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	var exact, partial []vertex
	var names []string
	for _, v := range p.vertices {
		if v.name == name {
			exact = append(exact, v)
		} else if strings.Contains(v.name, name) {
			partial = append(partial, v)
		}
		names = append(names, v.name)
	}
	switch {
	case len(exact) == 1:
		return exact[0].cached
	case len(exact) == 0 && len(partial) == 1:
		return partial[0].cached
	}
	t.Fatalf("%d steps named %q, %d whose names contain it, in %q", len(exact), name, len(partial), names)
	return false
}

func (p *progress) extracted() []digest.Digest {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Sorted(maps.Keys(p.extracting))
}

// ociFiles reads the files of an OCI layout tarball by name.
func ociFiles(t *testing.T, path string) map[string][]byte {
	t.Helper()
	dt, err := os.ReadFile(path)
	require.NoError(t, err)
	files := map[string][]byte{}
	tr := tar.NewReader(bytes.NewReader(dt))
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return files
		}
		require.NoError(t, err)
		b, err := io.ReadAll(tr)
		require.NoError(t, err)
		files[h.Name] = b
	}
}

// ociLayers returns the layers of the single image in an OCI layout
// tarball, checking that the tarball holds each of them.
func ociLayers(t *testing.T, path string) []ocispecs.Descriptor {
	t.Helper()
	files := ociFiles(t, path)
	var idx ocispecs.Index
	require.NoError(t, json.Unmarshal(files["index.json"], &idx))
	require.Len(t, idx.Manifests, 1)
	var m ocispecs.Manifest
	require.NoError(t, json.Unmarshal(files["blobs/sha256/"+idx.Manifests[0].Digest.Encoded()], &m))
	for _, l := range m.Layers {
		require.Contains(t, files, "blobs/sha256/"+l.Digest.Encoded(), "layer %s in the tarball", l.Digest)
	}
	return m.Layers
}

// ociLayerBlob returns one blob of an OCI layout tarball.
func ociLayerBlob(t *testing.T, path string, l ocispecs.Descriptor) []byte {
	t.Helper()
	blob, ok := ociFiles(t, path)["blobs/sha256/"+l.Digest.Encoded()]
	require.True(t, ok, "layer %s in the tarball", l.Digest)
	return blob
}

// layerFiles returns the files of one layer of an OCI layout tarball.
func layerFiles(t *testing.T, path string, l ocispecs.Descriptor) map[string][]byte {
	t.Helper()
	m, err := testutil.ReadTarToMap(ociLayerBlob(t, path, l), true)
	require.NoError(t, err)
	out := map[string][]byte{}
	for name, item := range m {
		out[name] = item.Data
	}
	return out
}

// fileWriter hands an exporter an already open file.
func fileWriter(t *testing.T, path string) func(map[string]string) (io.WriteCloser, error) {
	f, err := os.Create(path)
	require.NoError(t, err)
	return func(map[string]string) (io.WriteCloser, error) { return f, nil }
}

// delayServer holds HTTP requests until released, so that a build waits at
// a known point: started is closed once the build has reached it.
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

func (o importOpts) solveOpt(t *testing.T) client.SolveOpt {
	opt := client.SolveOpt{LocalMounts: o.locals}
	if o.store != nil {
		opt.Session = []session.Attachable{sessioncontent.NewAttachable(map[string]content.Store{"local:" + o.dir: o.store})}
	}
	if o.output != "" {
		opt.Exports = append(opt.Exports, client.ExportEntry{Type: client.ExporterLocal, OutputDir: o.output})
	}
	if o.oci != "" {
		opt.Exports = append(opt.Exports, client.ExportEntry{Type: client.ExporterOCI, Output: fileWriter(t, o.oci)})
	}
	return opt
}

// buildWithImport solves def in a gateway build that imports the cache as o
// says, with the directory served by o.store, and returns what the client
// saw of its progress.
func buildWithImport(ctx context.Context, t *testing.T, c *client.Client, def *llb.Definition, o importOpts) (*progress, error) {
	t.Helper()
	ch, p, wait := watch()
	_, err := c.Build(ctx, o.solveOpt(t), "lazytest", func(ctx context.Context, gc gw.Client) (*gw.Result, error) {
		return gc.Solve(ctx, gw.SolveRequest{
			Definition:   def.ToPB(),
			CacheImports: o.cacheImports(),
			Evaluate:     true,
		})
	}, ch)
	wait()
	return p, err
}
