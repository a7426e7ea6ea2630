package local

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	contentlocal "github.com/containerd/containerd/v2/plugins/content/local"
	cacheimporttypes "github.com/moby/buildkit/cache/remotecache/v1/types"
	digest "github.com/opencontainers/go-digest"
	ocispecs "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/stretchr/testify/require"
)

// testCache is a cache directory in the layout buildctl attaches: a
// containerd local content store holding layers, a cache config and the
// cache manifest that lists them.
type testCache struct {
	dir      string
	store    content.Store
	manifest ocispecs.Descriptor
	layers   []ocispecs.Descriptor
	data     map[digest.Digest][]byte
}

// newTestCache writes layers and a cache manifest: a manifest list, or with
// imageManifest an image manifest whose config is the cache config, the two
// shapes the local exporter writes.
func newTestCache(t *testing.T, imageManifest bool, layers ...string) *testCache {
	t.Helper()
	dir := t.TempDir()
	store, err := contentlocal.NewStore(dir)
	require.NoError(t, err)
	c := &testCache{dir: dir, store: store, data: map[digest.Digest][]byte{}}

	for _, l := range layers {
		c.layers = append(c.layers, c.write(t, ocispecs.MediaTypeImageLayerGzip, []byte(l)))
	}
	cfg, err := json.Marshal(cacheimporttypes.CacheConfig{})
	require.NoError(t, err)
	cfgDesc := c.write(t, cacheimporttypes.CacheConfigMediaTypeV0, cfg)

	if imageManifest {
		mfst, err := json.Marshal(ocispecs.Manifest{
			MediaType: ocispecs.MediaTypeImageManifest,
			Config:    cfgDesc,
			Layers:    c.layers,
		})
		require.NoError(t, err)
		c.manifest = c.write(t, ocispecs.MediaTypeImageManifest, mfst)
	} else {
		mfst, err := json.Marshal(ocispecs.Index{
			MediaType: ocispecs.MediaTypeImageIndex,
			Manifests: append(append([]ocispecs.Descriptor{}, c.layers...), cfgDesc),
		})
		require.NoError(t, err)
		c.manifest = c.write(t, ocispecs.MediaTypeImageIndex, mfst)
	}
	return c
}

func (c *testCache) write(t *testing.T, mediaType string, dt []byte) ocispecs.Descriptor {
	t.Helper()
	desc := ocispecs.Descriptor{MediaType: mediaType, Digest: digest.FromBytes(dt), Size: int64(len(dt))}
	require.NoError(t, content.WriteBlob(t.Context(), c.store, desc.Digest.String(), bytes.NewReader(dt), desc))
	c.data[desc.Digest] = dt
	return desc
}

func (c *testCache) blobPath(dgst digest.Digest) string {
	return filepath.Join(c.dir, "blobs", dgst.Algorithm().String(), dgst.Encoded())
}

func TestMissingLayers(t *testing.T) {
	for _, imageManifest := range []bool{false, true} {
		c := newTestCache(t, imageManifest, "kept", "deleted", "kept too")
		require.NoError(t, os.Remove(c.blobPath(c.layers[1].Digest)))

		layers, err := cacheLayers(c.data[c.manifest.Digest])
		require.NoError(t, err)
		require.Equal(t, c.layers, layers, "image-manifest=%v: the layers, without the cache config", imageManifest)

		missing, err := missingLayers(t.Context(), c.store, layers)
		require.NoError(t, err)
		require.Equal(t, map[digest.Digest]struct{}{c.layers[1].Digest: {}}, missing, "image-manifest=%v", imageManifest)

		dt, err := withoutLayers(c.data[c.manifest.Digest], missing)
		require.NoError(t, err)
		layers, err = cacheLayers(dt)
		require.NoError(t, err)
		require.Equal(t, []ocispecs.Descriptor{c.layers[0], c.layers[2]}, layers, "image-manifest=%v", imageManifest)
		require.Contains(t, string(dt), cacheimporttypes.CacheConfigMediaTypeV0, "the cache config stays")
		require.Contains(t, string(dt), `"mediaType":"`+c.manifest.MediaType+`"`)
	}
}

func TestCacheLayersRejectsGarbage(t *testing.T) {
	_, err := cacheLayers([]byte("not json"))
	require.ErrorContains(t, err, "failed to parse cache manifest")
}
