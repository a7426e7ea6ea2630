package local

import (
	"context"
	"fmt"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/moby/buildkit/cache/remotecache"
	"github.com/moby/buildkit/session"
	sessioncontent "github.com/moby/buildkit/session/content"
	"github.com/moby/buildkit/solver"
	"github.com/moby/buildkit/util/bklog"
	"github.com/moby/buildkit/util/progress"
	"github.com/moby/buildkit/worker"
	digest "github.com/opencontainers/go-digest"
	ocispecs "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/pkg/errors"
)

const (
	// sessionWaitTimeout bounds how long resolving waits for a session of
	// the calling build to connect, as getContentStore does.
	sessionWaitTimeout = 5 * time.Second
	// maxManifestSize bounds the cache manifest read at import, as the
	// importer bounds it.
	maxManifestSize = 1 << 20
	// contentInfoMethod is the gRPC method a session must expose to serve
	// any content store at all.
	contentInfoMethod = "/containerd.services.content.v1.Content/Info"
)

// resolveLazyImporter resolves an import with lazy=true: imported layers
// stay blob-only refs until an op mounts them, instead of being pulled and
// extracted while their records load.
//
// The eager importer unlazies through the importing session because a lazy
// ref can outlive it (moby/buildkit#3493, docker/buildx#1325). Here every
// read goes through cacheProvider, which finds a live session of the build
// that needs the blob. Eager import notices a missing layer blob while
// loading its record, and drops the record; here the manifest is checked
// up front and the importer is given it without the missing layers.
func resolveLazyImporter(ctx context.Context, sm *session.Manager, g session.Group, src string, dgst digest.Digest) (remotecache.Importer, ocispecs.Descriptor, error) {
	if err := dgst.Validate(); err != nil {
		return nil, ocispecs.Descriptor{}, errors.Wrapf(err, "failed to parse %s %q", attrDigest, dgst)
	}
	cs, sessionID, err := findManifestStore(ctx, sm, g, src, dgst)
	if err != nil {
		return nil, ocispecs.Descriptor{}, err
	}
	info, err := cs.Info(ctx, dgst)
	if err != nil {
		return nil, ocispecs.Descriptor{}, err
	}
	// The media type stays empty, as for eager import: the importer
	// detects it from the blob.
	desc := ocispecs.Descriptor{Digest: dgst, Size: info.Size}
	if desc.Size > maxManifestSize {
		return nil, ocispecs.Descriptor{}, errors.Errorf("blob %s is too large (%d > %d)", dgst, desc.Size, maxManifestSize)
	}
	dt, err := content.ReadBlob(ctx, cs, desc)
	if err != nil {
		return nil, ocispecs.Descriptor{}, errors.Wrapf(err, "failed to read cache manifest %s", dgst)
	}
	if got := digest.FromBytes(dt); got != dgst {
		return nil, ocispecs.Descriptor{}, errors.Errorf("local cache %s: cache manifest %s is corrupt: its content has digest %s", src, dgst, got)
	}

	layers, err := cacheLayers(dt)
	if err != nil {
		return nil, ocispecs.Descriptor{}, err
	}
	missing, err := missingLayers(ctx, cs, layers)
	if err != nil {
		return nil, ocispecs.Descriptor{}, errors.Wrapf(err, "failed to check layer blobs of local cache %s", src)
	}
	if len(missing) > 0 {
		msg := fmt.Sprintf("lazy local cache %s: %d of %d layer blobs are missing from the directory; steps that need them will run again", src, len(missing), len(layers))
		bklog.G(ctx).Warn(msg)
		progress.OneOff(ctx, msg)(nil)
		if dt, err = withoutLayers(dt, missing); err != nil {
			return nil, ocispecs.Descriptor{}, err
		}
	}

	p := &cacheProvider{
		sm:       sm,
		src:      src,
		manifest: desc,
		dt:       dt,
		importer: session.NewGroup(sessionID),
	}
	return &lazyImporter{p: p}, desc, nil
}

// lazyImporter is remotecache's importer reading through a cacheProvider
// that knows the content store of the worker it resolves for: a lazy read
// that fails verification drops its partial copy there.
type lazyImporter struct {
	p *cacheProvider
}

var _ remotecache.Importer = &lazyImporter{}

func (ci *lazyImporter) Resolve(ctx context.Context, desc ocispecs.Descriptor, id string, w worker.Worker) (solver.CacheManager, error) {
	p := *ci.p
	p.ingests = w.ContentStore()
	return remotecache.NewImporter(&p).Resolve(ctx, desc, id, w)
}

// findManifestStore returns the content store "local:"+src of the first
// session of g that holds the cache manifest dgst. The eager importer takes
// the first session of the group, but a group may hold several sessions of
// which only one attached the directory.
func findManifestStore(ctx context.Context, sm *session.Manager, g session.Group, src string, dgst digest.Digest) (content.Store, string, error) {
	ids := session.AllSessionIDs(g)
	if len(ids) == 0 {
		return nil, "", errors.New("local cache exporter/importer requires session")
	}
	storeID := contentStoreIDPrefix + src
	var lastErr error
	for _, id := range ids {
		caller, err := waitSession(ctx, sm, id)
		if err != nil {
			lastErr = err
			continue
		}
		if caller == nil || !caller.Supports(contentInfoMethod) {
			continue
		}
		cs := sessioncontent.NewCallerStore(caller, storeID)
		if _, err := cs.Info(ctx, dgst); err != nil {
			lastErr = err
			continue
		}
		return cs, id, nil
	}
	if lastErr != nil {
		return nil, "", errors.Wrapf(lastErr, "local cache %s: no session of this build holds cache manifest %s", src, dgst)
	}
	return nil, "", errors.Errorf("local cache %s: no session of this build serves the cache directory", src)
}

func waitSession(ctx context.Context, sm *session.Manager, id string) (session.Caller, error) {
	ctx, cancel := context.WithTimeoutCause(ctx, sessionWaitTimeout, errors.WithStack(context.DeadlineExceeded))
	defer cancel()
	return sm.Get(ctx, id, false)
}
