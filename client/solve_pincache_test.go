package client

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
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
	ctx := t.Context()
	layers := [][]byte{[]byte("layer1"), []byte("layer2")}
	dir, cs, manifest := setupCacheStore(ctx, t, []byte(`{"cache":"config"}`), layers, "latest")
	s, unpinned, err := pinCacheBlobs(ctx, cs, dir, manifest, maxPinnedCacheBlobs)
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
}

// Beyond the bound, blobs are left to the directory and counted.
func TestPinCacheBlobsBound(t *testing.T) {
	ctx := t.Context()
	dir, cs, manifest := setupCacheStore(ctx, t, []byte(`{}`), [][]byte{[]byte("a"), []byte("b"), []byte("c")}, "latest")
	s, unpinned, err := pinCacheBlobs(ctx, cs, dir, manifest, 2)
	require.NoError(t, err)
	defer s.Close()
	require.Len(t, s.files, 2)
	require.Equal(t, 3, unpinned)
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
		s, _, err := pinCacheBlobs(ctx, cs, dir, manifest, maxPinnedCacheBlobs)
		require.NoError(b, err)
		b.ReportMetric(float64(len(s.files)), "files")
		s.Close()
	}
}
