// Package cachetest holds what the lazy local cache integration tests share:
// checks that the suite's requirements are there, a daemon pruned back to
// empty, a view of a build's progress as the client sees it, a cache
// directory served through a store that records reads, and checks of a
// cache directory's content.
package cachetest

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
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
	"github.com/moby/buildkit/util/testutil"
	"github.com/moby/buildkit/util/testutil/integration"
	digest "github.com/opencontainers/go-digest"
	ocispecs "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/stretchr/testify/require"
)

// Run runs tests on every registered worker after checking the suite's
// requirements: a missing one fails the suite instead of skipping it.
func Run(t *testing.T, tests []func(t *testing.T, sb integration.Sandbox)) {
	t.Helper()
	RequireDeps(t)
	integration.Run(t, integration.TestFuncs(tests...))
}

// RequireDeps fails, never skips, when what the suite runs on is
// missing: a suite that skips proves nothing.
func RequireDeps(t *testing.T) {
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

func NewClient(t *testing.T, sb integration.Sandbox) *client.Client {
	t.Helper()
	c, err := client.New(sb.Context(), sb.Address())
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return c
}

func NewRegistry(t *testing.T, sb integration.Sandbox) string {
	t.Helper()
	reg, err := sb.NewRegistry()
	require.NoError(t, err, "the loopback registry must start (apt-get install docker-registry)")
	return reg
}

// PruneAll leaves the daemon as a fresh one: no records, no blobs, so what
// a following build uses comes from the imported cache.
func PruneAll(t *testing.T, c *client.Client, sb integration.Sandbox) {
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

// ExportCache solves def exporting its cache with mode=max to dir.
func ExportCache(t *testing.T, c *client.Client, sb integration.Sandbox, def *llb.Definition, dir string, opt client.SolveOpt) {
	t.Helper()
	opt.CacheExports = append(opt.CacheExports, client.CacheOptionsEntry{
		Type:  "local",
		Attrs: map[string]string{"dest": dir, "mode": "max"},
	})
	_, err := c.Solve(sb.Context(), def, opt, nil)
	require.NoError(t, err)
}

// Manifest returns the descriptor index.json of a cache directory
// points at, and the manifest itself.
func Manifest(t *testing.T, dir string) (ocispecs.Descriptor, ocispecs.Manifest) {
	t.Helper()
	dt, err := os.ReadFile(filepath.Join(dir, "index.json"))
	require.NoError(t, err)
	var idx ocispecs.Index
	require.NoError(t, json.Unmarshal(dt, &idx))
	require.Len(t, idx.Manifests, 1)
	dt, err = os.ReadFile(BlobPath(dir, idx.Manifests[0].Digest))
	require.NoError(t, err)
	var m ocispecs.Manifest
	require.NoError(t, json.Unmarshal(dt, &m))
	return idx.Manifests[0], m
}

func BlobPath(dir string, dgst digest.Digest) string {
	return filepath.Join(dir, "blobs", dgst.Algorithm().String(), dgst.Encoded())
}

// RequireComplete checks that every blob the cache directory's index
// references is there with the right digest.
func RequireComplete(t *testing.T, dir string) ocispecs.Manifest {
	t.Helper()
	_, m := Manifest(t, dir)
	for _, d := range append([]ocispecs.Descriptor{m.Config}, m.Layers...) {
		dt, err := os.ReadFile(BlobPath(dir, d.Digest))
		require.NoError(t, err, "cache %s references blob %s", dir, d.Digest)
		require.Equal(t, d.Digest, digest.FromBytes(dt), "blob %s in %s", d.Digest, dir)
	}
	return m
}

// CountingStore serves a cache directory to the daemon, as buildctl does,
// and records which blobs the daemon reads from it.
type CountingStore struct {
	content.Store
	mu    sync.Mutex
	reads map[digest.Digest]int
}

// NewCountingStore serves dir.
func NewCountingStore(t *testing.T, dir string) *CountingStore {
	t.Helper()
	s, err := contentlocal.NewStore(dir)
	require.NoError(t, err)
	return &CountingStore{Store: s, reads: map[digest.Digest]int{}}
}

// ReaderAt records the read.
func (s *CountingStore) ReaderAt(ctx context.Context, desc ocispecs.Descriptor) (content.ReaderAt, error) {
	s.mu.Lock()
	s.reads[desc.Digest]++
	s.mu.Unlock()
	return s.Store.ReaderAt(ctx, desc)
}

// LayerReads returns the layer blobs of the cache manifest m read so far.
func (s *CountingStore) LayerReads(m ocispecs.Manifest) []digest.Digest {
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

// Progress collects a build's progress as the client sees it.
type Progress struct {
	mu         sync.Mutex
	extracting map[string]struct{}
	vertices   map[digest.Digest]*client.Vertex
	done       chan struct{}
}

// WatchProgress returns a status channel for a solve and what it collects.
func WatchProgress() (chan *client.SolveStatus, *Progress) {
	ch := make(chan *client.SolveStatus)
	p := &Progress{extracting: map[string]struct{}{}, vertices: map[digest.Digest]*client.Vertex{}, done: make(chan struct{})}
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

// ImportErrors lists the errors of cache imports: the solver builds on
// without a cache it could not import, and reports why on this vertex.
func (p *Progress) ImportErrors() []string {
	<-p.done
	var out []string
	for _, v := range p.vertices {
		if strings.HasPrefix(v.Name, "importing cache manifest") && v.Error != "" {
			out = append(out, v.Error)
		}
	}
	return out
}

// Extracted returns how many distinct layers the build extracted.
func (p *Progress) Extracted() int {
	<-p.done
	return len(p.extracting)
}

// Uncached lists the names of build steps that ran instead of coming from
// cache. Resolving the base image and reading the cache manifest are not
// steps: they are never reported as cached.
func (p *Progress) Uncached() []string {
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

// Cached reports whether the step whose name contains name came from cache;
// it fails the test when no step has that name.
func (p *Progress) Cached(t *testing.T, name string) bool {
	t.Helper()
	<-p.done
	for _, v := range p.vertices {
		if strings.Contains(v.Name, name) {
			return v.Cached
		}
	}
	t.Fatalf("no step named %q", name)
	return false
}

// ociBlobs reads the files of an OCI layout tarball by name.
func ociBlobs(t *testing.T, path string) map[string][]byte {
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

// OCILayers returns the layers of the single image in an OCI layout
// tarball, checking that the tarball holds each of them.
func OCILayers(t *testing.T, path string) []ocispecs.Descriptor {
	t.Helper()
	files := ociBlobs(t, path)
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

// LayerFiles returns the files of one layer of an OCI layout tarball.
func LayerFiles(t *testing.T, path string, layer ocispecs.Descriptor) map[string][]byte {
	t.Helper()
	blob, ok := ociBlobs(t, path)["blobs/sha256/"+layer.Digest.Encoded()]
	require.True(t, ok, "layer %s in the tarball", layer.Digest)
	m, err := testutil.ReadTarToMap(blob, true)
	require.NoError(t, err)
	out := map[string][]byte{}
	for name, item := range m {
		out[name] = item.Data
	}
	return out
}
