// Package cachetest holds what the local cache integration tests of client
// and frontend/dockerfile share: base images with generated layers, a view
// of a build's progress as the client sees it, a cache directory served
// through a store that records reads, and checks of a cache directory's
// content.
package cachetest

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	contentlocal "github.com/containerd/containerd/v2/plugins/content/local"
	"github.com/moby/buildkit/util/testutil"
	digest "github.com/opencontainers/go-digest"
	ocispecs "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/stretchr/testify/require"
)

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

// Progress collects what a build's progress says about cache use, as the
// client sees it. The test feeds it the client's statuses (AddVertex,
// AddStatus) and reads it once the build has ended.
type Progress struct {
	mu         sync.Mutex
	extracting map[digest.Digest]struct{}
	vertices   map[string]Vertex
}

// Vertex is what Progress keeps of a build step.
type Vertex struct {
	Name      string
	Cached    bool
	Completed bool
	Error     string
}

func NewProgress() *Progress {
	return &Progress{extracting: map[digest.Digest]struct{}{}, vertices: map[string]Vertex{}}
}

// AddVertex records the latest state of the step with the given digest. A
// step reported cached stays cached: pulling a lazily imported layer of a
// cached step reports the step again, without the flag.
func (p *Progress) AddVertex(dgst string, v Vertex) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if prev, ok := p.vertices[dgst]; ok && prev.Cached {
		v.Cached = true
	}
	p.vertices[dgst] = v
}

// AddStatus records a status line; "extracting sha256:..." counts the
// layer as extracted.
func (p *Progress) AddStatus(id string) {
	if dgst, ok := strings.CutPrefix(id, "extracting "); ok {
		p.mu.Lock()
		defer p.mu.Unlock()
		p.extracting[digest.Digest(dgst)] = struct{}{}
	}
}

// ImportErrors lists the errors of cache imports: the solver builds on
// without a cache it could not import, and reports why on this vertex.
func (p *Progress) ImportErrors() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []string
	for _, v := range p.vertices {
		if strings.HasPrefix(v.Name, "importing cache manifest") && v.Error != "" {
			out = append(out, v.Error)
		}
	}
	return out
}

// Extracted returns the layers the build extracted.
func (p *Progress) Extracted() []digest.Digest {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Sorted(maps.Keys(p.extracting))
}

// Uncached lists the names of build steps that ran instead of coming from
// cache. Resolving the base image and reading the cache manifest are not
// steps: they are never reported as cached.
func (p *Progress) Uncached() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []string
	for _, v := range p.vertices {
		if strings.HasPrefix(v.Name, "docker-image://") || strings.HasPrefix(v.Name, "importing cache manifest") {
			continue
		}
		if !v.Cached && v.Completed && v.Error == "" {
			out = append(out, v.Name)
		}
	}
	return out
}

// Cached reports whether the step whose name contains name came from cache;
// it fails the test when no step has that name.
func (p *Progress) Cached(t *testing.T, name string) bool {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
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
