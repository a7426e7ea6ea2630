package local

import (
	"context"
	"encoding/json"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	cerrdefs "github.com/containerd/errdefs"
	cacheimporttypes "github.com/moby/buildkit/cache/remotecache/v1/types"
	"github.com/moby/buildkit/util/imageutil"
	digest "github.com/opencontainers/go-digest"
	ocispecs "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/pkg/errors"
	"golang.org/x/sync/errgroup"
)

// maxManifestSize bounds the manifest and config blobs read at import, as
// upstream's importer does.
const maxManifestSize = 1 << 20

// presenceCheckConcurrency bounds the Info calls in flight over the session.
const presenceCheckConcurrency = 8

// cacheManifest is what a cache manifest lists: the layer blobs its records
// can use and the cache config. config is empty for an image manifest
// without a cache config (inline cache).
type cacheManifest struct {
	layers []ocispecs.Descriptor
	config ocispecs.Descriptor
}

// missingLayers returns the layer blobs of m that cs does not hold. Only
// Info is called: no layer data is read.
func missingLayers(ctx context.Context, cs content.InfoProvider, m cacheManifest) (map[digest.Digest]struct{}, error) {
	found := make([]bool, len(m.layers))
	eg, egCtx := errgroup.WithContext(ctx)
	eg.SetLimit(presenceCheckConcurrency)
	for i, l := range m.layers {
		eg.Go(func() error {
			_, err := cs.Info(egCtx, l.Digest)
			switch {
			case err == nil:
				found[i] = true
			case !cerrdefs.IsNotFound(err):
				return errors.Wrapf(err, "failed to check blob %s", l.Digest)
			}
			return nil
		})
	}
	if err := eg.Wait(); err != nil {
		return nil, err
	}
	missing := map[digest.Digest]struct{}{}
	for i, ok := range found {
		if !ok {
			missing[m.layers[i].Digest] = struct{}{}
		}
	}
	return missing, nil
}

// readCacheManifest reads and parses the cache manifest desc: a manifest
// list whose entries are the layers plus the cache config, or an image
// manifest with the cache config as its config.
func readCacheManifest(ctx context.Context, p content.Provider, desc ocispecs.Descriptor) (cacheManifest, error) {
	dt, err := readSmallBlob(ctx, p, desc)
	if err != nil {
		return cacheManifest{}, errors.Wrapf(err, "failed to read cache manifest %s", desc.Digest)
	}
	mt, err := imageutil.DetectManifestBlobMediaType(dt)
	if err != nil {
		return cacheManifest{}, err
	}
	var m cacheManifest
	switch mt {
	case images.MediaTypeDockerSchema2ManifestList, ocispecs.MediaTypeImageIndex:
		var idx ocispecs.Index
		if err := json.Unmarshal(dt, &idx); err != nil {
			return cacheManifest{}, errors.Wrapf(err, "failed to parse cache manifest %s", desc.Digest)
		}
		for _, d := range idx.Manifests {
			if d.MediaType == cacheimporttypes.CacheConfigMediaTypeV0 {
				m.config = d
			} else {
				m.layers = append(m.layers, d)
			}
		}
	case images.MediaTypeDockerSchema2Manifest, ocispecs.MediaTypeImageManifest:
		var mfst ocispecs.Manifest
		if err := json.Unmarshal(dt, &mfst); err != nil {
			return cacheManifest{}, errors.Wrapf(err, "failed to parse cache manifest %s", desc.Digest)
		}
		m.layers = mfst.Layers
		if mfst.Config.MediaType == cacheimporttypes.CacheConfigMediaTypeV0 {
			m.config = mfst.Config
		}
	default:
		return cacheManifest{}, errors.Errorf("unsupported cache manifest type %s for %s", mt, desc.Digest)
	}
	return m, nil
}
