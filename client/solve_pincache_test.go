package client

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	contentlocal "github.com/containerd/containerd/v2/plugins/content/local"
	cerrdefs "github.com/containerd/errdefs"
	digest "github.com/opencontainers/go-digest"
	ocispecs "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/stretchr/testify/require"
)

// The blobs of the imported cache are read as they were when it was
// pinned, after the directory lost them; other digests are read from the
// directory as it is.
func TestPinCacheBlobsOutliveTheDirectory(t *testing.T) {
	if !canPinCacheBlobs {
		t.Skip("an open file blocks its unlink and rename here: nothing is pinned")
	}
	ctx := t.Context()
	layers := [][]byte{[]byte("layer1"), []byte("layer2")}
	dir, cs, manifest := setupCacheStore(ctx, t, []byte(`{"cache":"config"}`), layers, "latest")
	s, unpinned, err := pinCacheBlobs(ctx, cs, dir, []digest.Digest{manifest}, maxPinnedCacheBlobs)
	require.NoError(t, err)
	defer s.Close()
	require.Zero(t, unpinned)
	require.Len(t, s.files, 4) // manifest, config and two layers

	replaced := dir + "-old"
	require.NoError(t, os.Rename(dir, replaced))
	require.NoError(t, os.RemoveAll(replaced))
	for _, l := range layers {
		desc := ocispecs.Descriptor{Digest: digest.FromBytes(l), Size: int64(len(l))}
		info, err := s.Info(ctx, desc.Digest)
		require.NoError(t, err)
		require.Equal(t, desc.Size, info.Size)
		dt, err := content.ReadBlob(ctx, s, desc)
		require.NoError(t, err)
		require.Equal(t, l, dt)
	}
	_, err = s.Info(ctx, digest.FromString("not referenced"))
	require.ErrorIs(t, err, cerrdefs.ErrNotFound)

	require.NoError(t, s.Close())
	_, err = content.ReadBlob(ctx, s, ocispecs.Descriptor{Digest: digest.FromBytes(layers[0]), Size: int64(len(layers[0]))})
	require.ErrorIs(t, err, os.ErrClosed)
}

// The bound is per directory: the manifests and cache configs of all its
// imports come first, a blob they share counts once, and the rest are left
// to the directory and counted.
func TestPinCacheBlobsBound(t *testing.T) {
	ctx := t.Context()
	dir, cs, m1 := setupCacheStore(ctx, t, []byte(`{}`), [][]byte{[]byte("a"), []byte("b"), []byte("c")}, "latest")
	m2 := writeCacheManifest(ctx, t, cs, []byte(`{"other":"config"}`), [][]byte{[]byte("b"), []byte("d")})

	s, unpinned, err := pinCacheBlobs(ctx, cs, dir, []digest.Digest{m1, m2}, 4)
	require.NoError(t, err)
	defer s.Close()
	require.Len(t, s.files, 4)
	for _, d := range []digest.Digest{m1, digest.FromBytes([]byte(`{}`)), m2, digest.FromBytes([]byte(`{"other":"config"}`))} {
		require.Contains(t, s.files, d)
	}
	require.Equal(t, 4, unpinned) // a, b, c, d
}

// A failure to open a blob other than its absence stops the pinning: it is
// returned, and what is left is counted, not taken for missing.
func TestPinCacheBlobsOpenFailure(t *testing.T) {
	if !canPinCacheBlobs {
		t.Skip("an open file blocks its unlink and rename here: nothing is pinned")
	}
	ctx := t.Context()
	layers := [][]byte{[]byte("a"), []byte("b"), []byte("c")}
	dir, cs, manifest := setupCacheStore(ctx, t, []byte(`{}`), layers, "latest")
	// A symlink loop: open fails with ELOOP, as it would with EMFILE.
	p := filepath.Join(dir, "blobs", "sha256", digest.FromBytes(layers[1]).Encoded())
	require.NoError(t, os.Remove(p))
	require.NoError(t, os.Symlink(filepath.Base(p), p))

	s, unpinned, err := pinCacheBlobs(ctx, cs, dir, []digest.Digest{manifest}, maxPinnedCacheBlobs)
	require.Error(t, err)
	require.NotErrorIs(t, err, os.ErrNotExist)
	defer s.Close()
	require.Len(t, s.files, 3) // manifest, config, a
	require.Equal(t, 2, unpinned)
}

// Nothing is pinned for a solve whose session does not attach the client's
// stores (SessionPreInitialized): no read would reach the files.
func TestPinLazyImportsOnlyAttached(t *testing.T) {
	if !canPinCacheBlobs {
		t.Skip("an open file blocks its unlink and rename here: nothing is pinned")
	}
	ctx := t.Context()
	dir, cs, manifest := setupCacheStore(ctx, t, []byte(`{}`), [][]byte{[]byte("a")}, "latest")
	opt := func() *cacheOptions {
		return &cacheOptions{
			contentStores: map[string]content.Store{"local:" + dir: cs},
			lazyImports:   map[string][]digest.Digest{dir: {manifest}},
		}
	}
	notAttached := opt()
	require.Empty(t, pinLazyImports(ctx, notAttached, false))
	require.Equal(t, cs, notAttached.contentStores["local:"+dir])

	attached := opt()
	pinned := pinLazyImports(ctx, attached, true)
	defer closePinned(pinned)
	require.Len(t, pinned, 1)
	require.Len(t, pinned[0].files, 3)
	require.Equal(t, content.Store(pinned[0]), attached.contentStores["local:"+dir])
}

// writeCacheManifest writes a cache manifest with configData and layers
// into cs.
func writeCacheManifest(ctx context.Context, t *testing.T, cs content.Store, configData []byte, layersData [][]byte) digest.Digest {
	m := ocispecs.Manifest{
		MediaType: ocispecs.MediaTypeImageManifest,
		Config:    ocispecs.Descriptor{Digest: writeBlob(ctx, t, cs, configData), Size: int64(len(configData)), MediaType: "application/vnd.buildkit.cacheconfig.v0"},
	}
	for _, l := range layersData {
		m.Layers = append(m.Layers, ocispecs.Descriptor{Digest: writeBlob(ctx, t, cs, l), Size: int64(len(l))})
	}
	dt, err := json.Marshal(m)
	require.NoError(t, err)
	return writeBlob(ctx, t, cs, dt)
}

// BenchmarkPinCacheBlobs pins a cache of 1,000 layer blobs, as a solve does
// when it starts, and reports the files it holds open.
func BenchmarkPinCacheBlobs(b *testing.B) {
	ctx := b.Context()
	dir := b.TempDir()
	cs, err := contentlocal.NewStore(dir)
	require.NoError(b, err)
	write := func(dt []byte) ocispecs.Descriptor {
		desc := ocispecs.Descriptor{Digest: digest.FromBytes(dt), Size: int64(len(dt))}
		require.NoError(b, content.WriteBlob(ctx, cs, desc.Digest.String(), bytes.NewReader(dt), desc))
		return desc
	}
	m := ocispecs.Manifest{Config: write([]byte(`{}`))}
	for i := range 1000 {
		m.Layers = append(m.Layers, write(fmt.Appendf(nil, "layer %d", i)))
	}
	dt, err := json.Marshal(m)
	require.NoError(b, err)
	manifest := write(dt).Digest
	for b.Loop() {
		s, _, err := pinCacheBlobs(ctx, cs, dir, []digest.Digest{manifest}, maxPinnedCacheBlobs)
		require.NoError(b, err)
		b.ReportMetric(float64(len(s.files)), "files")
		s.Close()
	}
}
