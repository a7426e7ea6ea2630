package client_test

import (
	"context"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	contentlocal "github.com/containerd/containerd/v2/plugins/content/local"
	"github.com/moby/buildkit/client"
	"github.com/moby/buildkit/client/llb"
	gw "github.com/moby/buildkit/frontend/gateway/client"
	"github.com/moby/buildkit/session"
	sessioncontent "github.com/moby/buildkit/session/content"
	"github.com/moby/buildkit/util/testutil/integration"
	digest "github.com/opencontainers/go-digest"
	ocispecs "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/stretchr/testify/require"
	"github.com/tonistiigi/fsutil"
)

// requireIntegrationDeps fails, never skips, when what the suite runs on is
// missing: a suite that skips proves nothing.
func requireIntegrationDeps(t *testing.T) {
	t.Helper()
	if os.Getuid() != 0 {
		t.Fatal("integration tests start buildkitd with the runc worker and must run as root")
	}
	for bin, pkg := range map[string]string{
		"buildkitd": "make build (bin/ must be first in PATH)",
		"runc":      "apt-get install runc",
		"registry":  "apt-get install docker-registry, then link /usr/bin/docker-registry as registry in PATH (make deps does)",
	} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Fatalf("%s not found in PATH: %s", bin, pkg)
		}
	}
	out, err := exec.Command("buildkitd", "--version").CombinedOutput()
	require.NoError(t, err, string(out))
	t.Logf("testing %s", strings.TrimSpace(string(out)))
}

func newClient(t *testing.T, sb integration.Sandbox) *client.Client {
	t.Helper()
	c, err := client.New(sb.Context(), sb.Address())
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return c
}

func newRegistry(t *testing.T, sb integration.Sandbox) string {
	t.Helper()
	reg, err := sb.NewRegistry()
	require.NoError(t, err, "the loopback registry must start (apt-get install docker-registry)")
	return reg
}

// pruneAll leaves the daemon as a fresh one: no records, no blobs, so what
// a following build uses comes from the imported cache.
func pruneAll(t *testing.T, c *client.Client, sb integration.Sandbox) {
	t.Helper()
	for range 2 {
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
	du, err := c.DiskUsage(sb.Context())
	require.NoError(t, err)
	for _, r := range du {
		t.Logf("left after prune: %s in-use=%v mutable=%v parents=%v %q", r.ID, r.InUse, r.Mutable, r.Parents, r.Description)
	}
	t.Fatal("daemon still holds records after prune")
}

// exportCache solves def exporting its cache with mode=max to dir.
func exportCache(t *testing.T, c *client.Client, sb integration.Sandbox, def *llb.Definition, dir string, opt client.SolveOpt) {
	t.Helper()
	opt.CacheExports = append(opt.CacheExports, client.CacheOptionsEntry{
		Type:  "local",
		Attrs: map[string]string{"dest": dir, "mode": "max"},
	})
	_, err := c.Solve(sb.Context(), def, opt, nil)
	require.NoError(t, err)
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

// requireCompleteCache checks that every blob the cache directory's index
// references is there with the right digest.
func requireCompleteCache(t *testing.T, dir string) ocispecs.Manifest {
	t.Helper()
	_, m := cacheManifest(t, dir)
	for _, d := range append([]ocispecs.Descriptor{m.Config}, m.Layers...) {
		dt, err := os.ReadFile(blobPath(dir, d.Digest))
		require.NoError(t, err, "cache %s references blob %s", dir, d.Digest)
		require.Equal(t, d.Digest, digest.FromBytes(dt), "blob %s in %s", d.Digest, dir)
	}
	return m
}

// countingStore serves a cache directory to the daemon, as buildctl does,
// and records which blobs the daemon reads from it.
type countingStore struct {
	content.Store
	mu    sync.Mutex
	reads map[digest.Digest]int
}

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

// progressLog collects a build's progress as the client sees it.
type progressLog struct {
	mu         sync.Mutex
	extracting map[string]struct{}
	vertices   map[digest.Digest]*client.Vertex
	done       chan struct{}
}

func watchProgress() (chan *client.SolveStatus, *progressLog) {
	ch := make(chan *client.SolveStatus)
	p := &progressLog{extracting: map[string]struct{}{}, vertices: map[digest.Digest]*client.Vertex{}, done: make(chan struct{})}
	go func() {
		defer close(p.done)
		for st := range ch {
			p.mu.Lock()
			for _, s := range st.Statuses {
				if strings.HasPrefix(s.ID, "extracting sha256:") {
					p.extracting[s.ID] = struct{}{}
				}
			}
			for _, v := range st.Vertexes {
				p.vertices[v.Digest] = v
			}
			p.mu.Unlock()
		}
	}()
	return ch, p
}

// importErrors lists the errors of cache imports: the solver builds on
// without a cache it could not import, and reports why on this vertex.
func (p *progressLog) importErrors() []string {
	<-p.done
	var out []string
	for _, v := range p.vertices {
		if strings.HasPrefix(v.Name, "importing cache manifest") && v.Error != "" {
			out = append(out, v.Error)
		}
	}
	return out
}

// extracted returns how many distinct layers the build extracted.
func (p *progressLog) extracted() int {
	<-p.done
	return len(p.extracting)
}

// uncached lists the names of build steps that ran instead of coming from
// cache. Resolving the base image and reading the cache manifest are not
// steps: they are never reported as cached.
func (p *progressLog) uncached() []string {
	<-p.done
	var out []string
	for _, v := range p.vertices {
		if strings.HasPrefix(v.Name, "docker-image://") || strings.HasPrefix(v.Name, "importing cache manifest") {
			continue
		}
		if !v.Cached && v.Completed != nil && v.Error == "" {
			out = append(out, v.Name)
		}
	}
	return out
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
		f, err := os.Create(o.oci)
		require.NoError(t, err)
		opt.Exports = append(opt.Exports, client.ExportEntry{
			Type:   client.ExporterOCI,
			Output: func(map[string]string) (io.WriteCloser, error) { return f, nil },
		})
	}
	return opt
}

// buildWithImport solves def in a gateway build that imports the cache as o
// says, and returns what the client saw of its progress.
func buildWithImport(ctx context.Context, t *testing.T, c *client.Client, def *llb.Definition, o importOpts) (*progressLog, error) {
	t.Helper()
	ch, p := watchProgress()
	_, err := c.Build(ctx, o.solveOpt(t), "lazy-local-cache-test", func(ctx context.Context, gc gw.Client) (*gw.Result, error) {
		return gc.Solve(ctx, gw.SolveRequest{
			Definition:   def.ToPB(),
			CacheImports: o.cacheImports(),
			Evaluate:     true,
		})
	}, ch)
	return p, err
}
