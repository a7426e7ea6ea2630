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

// maxManifestSize bounds the cache manifest read at import, as the importer
// itself does.
const maxManifestSize = 1 << 20

// presenceCheckConcurrency bounds the Info calls in flight over the session.
const presenceCheckConcurrency = 8

// missingLayers returns the layer blobs listed by the cache manifest desc
// that cs does not hold, and how many layers it lists. Only Info is called:
// no layer data is read.
func missingLayers(ctx context.Context, cs content.Store, desc ocispecs.Descriptor) (map[digest.Digest]struct{}, int, error) {
	layers, err := cacheLayers(ctx, cs, desc)
	if err != nil {
		return nil, 0, err
	}
	found := make([]bool, len(layers))
	eg, egCtx := errgroup.WithContext(ctx)
	eg.SetLimit(presenceCheckConcurrency)
	for i, l := range layers {
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
		return nil, 0, err
	}
	missing := map[digest.Digest]struct{}{}
	for i, ok := range found {
		if !ok {
			missing[layers[i].Digest] = struct{}{}
		}
	}
	return missing, len(layers), nil
}

// cacheLayers lists the layer descriptors of a cache manifest: the entries
// of a manifest list other than the cache config, or the layers of an image
// manifest. These are the blobs the cache config's records can reference.
func cacheLayers(ctx context.Context, cs content.Store, desc ocispecs.Descriptor) ([]ocispecs.Descriptor, error) {
	if desc.Size > maxManifestSize {
		return nil, errors.Errorf("cache manifest %s is too large (%d > %d)", desc.Digest, desc.Size, maxManifestSize)
	}
	dt, err := content.ReadBlob(ctx, cs, desc)
	if err != nil {
		return nil, errors.Wrapf(err, "failed to read cache manifest %s", desc.Digest)
	}
	mt, err := imageutil.DetectManifestBlobMediaType(dt)
	if err != nil {
		return nil, err
	}
	switch mt {
	case images.MediaTypeDockerSchema2ManifestList, ocispecs.MediaTypeImageIndex:
		var idx ocispecs.Index
		if err := json.Unmarshal(dt, &idx); err != nil {
			return nil, errors.Wrapf(err, "failed to parse cache manifest %s", desc.Digest)
		}
		var layers []ocispecs.Descriptor
		for _, m := range idx.Manifests {
			if m.MediaType != cacheimporttypes.CacheConfigMediaTypeV0 {
				layers = append(layers, m)
			}
		}
		return layers, nil
	case images.MediaTypeDockerSchema2Manifest, ocispecs.MediaTypeImageManifest:
		var m ocispecs.Manifest
		if err := json.Unmarshal(dt, &m); err != nil {
			return nil, errors.Wrapf(err, "failed to parse cache manifest %s", desc.Digest)
		}
		return m.Layers, nil
	default:
		return nil, errors.Errorf("unsupported cache manifest type %s for %s", mt, desc.Digest)
	}
}
