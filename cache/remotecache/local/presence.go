package local

import (
	"context"
	"encoding/json"
	"slices"

	"github.com/containerd/containerd/v2/core/content"
	cerrdefs "github.com/containerd/errdefs"
	cacheimporttypes "github.com/moby/buildkit/cache/remotecache/v1/types"
	digest "github.com/opencontainers/go-digest"
	ocispecs "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/pkg/errors"
	"golang.org/x/sync/errgroup"
)

// presenceCheckConcurrency bounds the Info calls in flight over a session.
const presenceCheckConcurrency = 8

// cacheLayers returns the layer blobs a cache manifest lists: the entries of
// a manifest list other than the cache config, or the layers of an image
// manifest. The two shapes have no field in common, so one decoding serves
// both.
func cacheLayers(dt []byte) ([]ocispecs.Descriptor, error) {
	var m struct {
		Manifests []ocispecs.Descriptor `json:"manifests"`
		Layers    []ocispecs.Descriptor `json:"layers"`
	}
	if err := json.Unmarshal(dt, &m); err != nil {
		return nil, errors.Wrap(err, "failed to parse cache manifest")
	}
	layers := m.Layers
	for _, d := range m.Manifests {
		if d.MediaType != cacheimporttypes.CacheConfigMediaTypeV0 {
			layers = append(layers, d)
		}
	}
	return layers, nil
}

// withoutLayers returns the cache manifest dt without the layer blobs in
// drop, everything else as it was. The importer then finds no blob for the
// records that need them: those records get no result, and their steps run
// again, which is what eager import ends up with when it fails to pull such
// a blob while loading the record.
func withoutLayers(dt []byte, drop map[digest.Digest]struct{}) ([]byte, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(dt, &m); err != nil {
		return nil, errors.Wrap(err, "failed to parse cache manifest")
	}
	for _, key := range []string{"manifests", "layers"} {
		raw, ok := m[key]
		if !ok {
			continue
		}
		var descs []ocispecs.Descriptor
		if err := json.Unmarshal(raw, &descs); err != nil {
			return nil, errors.Wrapf(err, "failed to parse %s of cache manifest", key)
		}
		kept := slices.DeleteFunc(descs, func(d ocispecs.Descriptor) bool {
			_, ok := drop[d.Digest]
			return ok
		})
		b, err := json.Marshal(kept)
		if err != nil {
			return nil, err
		}
		m[key] = b
	}
	return json.Marshal(m)
}

// missingLayers returns the digests of layers that cs does not hold. Only
// Info is called: no layer data is read.
func missingLayers(ctx context.Context, cs content.InfoProvider, layers []ocispecs.Descriptor) (map[digest.Digest]struct{}, error) {
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
		return nil, err
	}
	missing := map[digest.Digest]struct{}{}
	for i, ok := range found {
		if !ok {
			missing[layers[i].Digest] = struct{}{}
		}
	}
	return missing, nil
}
