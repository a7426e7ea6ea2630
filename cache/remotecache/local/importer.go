package local

import (
	"context"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/moby/buildkit/cache/remotecache"
	v1 "github.com/moby/buildkit/cache/remotecache/v1"
	"github.com/moby/buildkit/solver"
	"github.com/moby/buildkit/worker"
	digest "github.com/opencontainers/go-digest"
	ocispecs "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/pkg/errors"
)

// importer turns a local cache manifest into a cache manager.
//
// When a lazy import found layer blobs missing from the directory, it leaves
// them out of the layers the cache config can use: records that need them
// get no loadable result, so their steps run again, and nothing is read or
// extracted for them. Eager import gets the same outcome by failing the
// unlazy while a record loads, which upstream's GetByBlob answers by leaving
// the half-made ref in use; this way no ref is made at all. With nothing
// missing, upstream's importer does the work unchanged.
type importer struct {
	remotecache.Importer
	p       *cacheProvider
	missing map[digest.Digest]struct{}
}

var _ remotecache.Importer = &importer{}

func newImporter(p *cacheProvider, missing map[digest.Digest]struct{}) remotecache.Importer {
	return &importer{Importer: remotecache.NewImporter(p), p: p, missing: missing}
}

func (ci *importer) Resolve(ctx context.Context, desc ocispecs.Descriptor, id string, w worker.Worker) (solver.CacheManager, error) {
	// Lazy reads happen after this, into this worker's content store.
	if cs := w.ContentStore(); cs != nil {
		ci.p.ingests = cs
	}
	if len(ci.missing) == 0 {
		return ci.Importer.Resolve(ctx, desc, id, w)
	}
	m, err := readCacheManifest(ctx, ci.p, desc)
	if err != nil {
		return nil, err
	}
	if m.config.Digest == "" {
		// Not a cache manifest of ours (inline cache in an image): leave
		// it to upstream.
		return ci.Importer.Resolve(ctx, desc, id, w)
	}
	layers := v1.DescriptorProvider{}
	for _, l := range m.layers {
		if _, ok := ci.missing[l.Digest]; !ok {
			layers[l.Digest] = v1.DescriptorProviderPair{Descriptor: l, Provider: ci.p}
		}
	}
	dt, err := readSmallBlob(ctx, ci.p, m.config)
	if err != nil {
		return nil, errors.Wrapf(err, "failed to read cache config %s", m.config.Digest)
	}
	cc := v1.NewCacheChains()
	if err := v1.Parse(dt, layers, cc); err != nil {
		return nil, err
	}
	keys, results, err := v1.NewCacheKeyStorage(cc, w)
	if err != nil {
		return nil, err
	}
	return solver.NewCacheManager(ctx, id, keys, results), nil
}

// readSmallBlob reads a manifest or config blob, bounded as the importer
// bounds them.
func readSmallBlob(ctx context.Context, p content.Provider, desc ocispecs.Descriptor) ([]byte, error) {
	if desc.Size > maxManifestSize {
		return nil, errors.Errorf("blob %s is too large (%d > %d)", desc.Digest, desc.Size, maxManifestSize)
	}
	return content.ReadBlob(ctx, p, desc)
}
