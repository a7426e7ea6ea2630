package local

import (
	"bytes"
	"context"
	"io"
	"strings"
	"sync"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/remotes"
	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/buildkit/session"
	sessioncontent "github.com/moby/buildkit/session/content"
	"github.com/moby/buildkit/util/bklog"
	ocispecs "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/pkg/errors"
)

// cacheProvider reads the blobs of a lazily imported local cache directory
// through client sessions.
//
// A record imported by one build can be loaded and mounted by another build
// long after the importing session closed (linked builds, a persistent
// daemon). The directory is reachable only through a session that attached
// it, so every read looks for a live one: first the sessions of the group
// that triggers the read (ProviderForSession, as the registry importer does
// since moby/buildkit#7047), then the importing session while it lasts. When
// none serves the blob, the read fails with an error saying so and how to
// fix it.
type cacheProvider struct {
	sm  *session.Manager
	src string
	// manifest is the imported cache manifest. A session whose store
	// holds it serves this cache.
	manifest ocispecs.Descriptor
	// dt is what the importer reads as the manifest: its content, read
	// once at import, without the layers missing from the directory.
	dt []byte
	// importer is the group that imported the cache; it may have ended.
	importer session.Group
	// bound is the group of the build that triggers reads; nil until
	// ProviderForSession.
	bound session.Group
	// ingests is the content store of the worker the cache was resolved
	// for, which lazy reads are fetched into.
	ingests ingestAborter
}

// ingestAborter is the part of the daemon's content store that cleans up
// after a failed fetch.
type ingestAborter interface {
	Abort(ctx context.Context, ref string) error
}

var (
	_ content.Provider = &cacheProvider{}
	_ interface {
		ProviderForSession(session.Group) content.Provider
	} = &cacheProvider{}
)

// ProviderForSession returns a copy of p that reads through the sessions of
// g, the build that needs the blob now, before the importing session.
func (p *cacheProvider) ProviderForSession(g session.Group) content.Provider {
	p2 := *p
	p2.bound = g
	return &p2
}

// ReaderAt opens the blob through the first live session that serves the
// directory and holds it, and verifies it as it streams. No layer is
// unlazied while its record loads (there is no UnlazySession): each is read
// when an op mounts it.
func (p *cacheProvider) ReaderAt(ctx context.Context, desc ocispecs.Descriptor) (content.ReaderAt, error) {
	if desc.Digest == p.manifest.Digest && p.dt != nil {
		return nopCloserReaderAt{bytes.NewReader(p.dt)}, nil
	}
	r := &failoverReaderAt{p: p, ctx: ctx, desc: desc, tried: map[string]struct{}{}}
	if err := r.open(); err != nil {
		return nil, err
	}
	return newVerifiedReaderAt(r, desc, "local cache "+p.src, func() {
		p.abortFetch(context.WithoutCancel(ctx), desc)
	}), nil
}

// abortFetch drops the daemon's partial copy of desc left by the fetch that
// is reading it, so that a fetch that failed verification leaves nothing to
// resume or commit. That fetch (remotes.Fetch, through contentutil.Copy)
// writes under remotes.MakeRefKey of the descriptor with the payload types
// it registered in ctx, and holds that ref while it reads: no other fetch's
// ingest is touched, not even one of the same blob under another ref.
func (p *cacheProvider) abortFetch(ctx context.Context, desc ocispecs.Descriptor) {
	if p.ingests == nil {
		return
	}
	ref := remotes.MakeRefKey(ctx, desc)
	if err := p.ingests.Abort(ctx, ref); err != nil && !cerrdefs.IsNotFound(err) {
		bklog.G(ctx).WithError(err).Warnf("local cache %s: aborting ingest %s of corrupt blob %s", p.src, ref, desc.Digest)
	}
}

// sessionIDs lists the sessions to try, those of the bound group first.
func (p *cacheProvider) sessionIDs() []string {
	var ids []string
	seen := map[string]struct{}{}
	for _, g := range []session.Group{p.bound, p.importer} {
		for _, id := range session.AllSessionIDs(g) {
			if _, ok := seen[id]; !ok {
				seen[id] = struct{}{}
				ids = append(ids, id)
			}
		}
	}
	return ids
}

// openBlob opens desc through the first live session, not in skip, whose
// store "local:"+src holds it. Sessions that have gone, attach no such
// store, lack the blob or fail are passed over; when all are, the error
// says which it was and what to do.
func (p *cacheProvider) openBlob(ctx context.Context, desc ocispecs.Descriptor, skip map[string]struct{}) (content.ReaderAt, string, error) {
	storeID := contentStoreIDPrefix + p.src
	var lacking, failed []string
	var lastErr error
	for _, id := range p.sessionIDs() {
		if _, ok := skip[id]; ok {
			continue
		}
		// noWait: a session of a running build is connected already, and
		// one that has gone does not come back.
		caller, err := p.sm.Get(ctx, id, true)
		if err != nil || caller == nil || !caller.Supports(contentInfoMethod) {
			continue
		}
		cs := sessioncontent.NewCallerStore(caller, storeID)
		ra, err := cs.ReaderAt(ctx, desc) // Info first, then reads
		switch {
		case err == nil:
			return ra, id, nil
		case ctx.Err() != nil:
			return nil, "", err
		case cerrdefs.IsNotFound(err):
			// Not found is also the answer for a store the session
			// does not attach: one that holds the imported manifest
			// serves this cache and lacks the blob.
			if _, merr := cs.Info(ctx, p.manifest.Digest); merr == nil {
				lacking = append(lacking, id)
			}
		default:
			failed = append(failed, id)
			lastErr = err
		}
	}
	const fix = "import the same directory in this build (buildctl --import-cache or buildx --cache-from type=local,src=%[1]s), or import it without lazy=true"
	switch {
	case len(lacking) > 0:
		return nil, "", errors.Wrapf(cerrdefs.ErrNotFound,
			"local cache %s: blob %s is missing from the cache directory (served by session %s); the directory changed after the cache was imported: export the cache again, or import it without lazy=true",
			p.src, desc.Digest, strings.Join(lacking, ", "))
	case len(failed) > 0:
		return nil, "", errors.Wrapf(cerrdefs.ErrUnavailable,
			"local cache %[1]s: could not read blob %[2]s through session %[3]s (%[4]v): "+fix,
			p.src, desc.Digest, strings.Join(failed, ", "), lastErr)
	default:
		return nil, "", errors.Wrapf(cerrdefs.ErrUnavailable,
			"local cache %[1]s: no active session of this build serves the cache directory, needed to read blob %[2]s: "+fix,
			p.src, desc.Digest)
	}
}

// failoverReaderAt reads one blob through a session that serves the cache
// directory. If that session closes mid-read it reopens the blob through
// another one, so a client going away between Info and ReadAt surfaces as
// our error, not as gRPC's "the client connection is closing".
type failoverReaderAt struct {
	p    *cacheProvider
	ctx  context.Context
	desc ocispecs.Descriptor

	// mu guards the session in use, which a failed read replaces.
	mu    sync.Mutex
	ra    content.ReaderAt
	id    string
	tried map[string]struct{}
}

var _ content.ReaderAt = &failoverReaderAt{}

// open moves to the next session that serves the blob; r.mu is held, or r
// not shared yet.
func (r *failoverReaderAt) open() error {
	ra, id, err := r.p.openBlob(r.ctx, r.desc, r.tried)
	if err != nil {
		return err
	}
	r.tried[id] = struct{}{}
	if r.ra != nil {
		r.ra.Close()
	}
	r.ra, r.id = ra, id
	return nil
}

func (r *failoverReaderAt) ReadAt(b []byte, off int64) (int, error) {
	for {
		r.mu.Lock()
		ra, id := r.ra, r.id
		r.mu.Unlock()
		n, err := ra.ReadAt(b, off)
		if err == nil || errors.Is(err, io.EOF) || r.ctx.Err() != nil {
			return n, err
		}
		// The session failed under us: retry the whole read elsewhere,
		// unless a concurrent read has moved on already.
		r.mu.Lock()
		var oerr error
		if r.ra == ra {
			oerr = r.open()
		}
		r.mu.Unlock()
		if oerr != nil {
			return 0, errors.Wrapf(oerr, "reading through session %s failed: %v", id, err)
		}
	}
}

// Size is the descriptor's size when known: a file shorter than that then
// reads as truncated instead of passing for a shorter blob.
func (r *failoverReaderAt) Size() int64 {
	if r.desc.Size > 0 {
		return r.desc.Size
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.ra.Size()
}

func (r *failoverReaderAt) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.ra.Close()
}

type nopCloserReaderAt struct{ *bytes.Reader }

func (nopCloserReaderAt) Close() error { return nil }
