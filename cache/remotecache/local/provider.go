package local

import (
	"context"
	"strings"

	"github.com/containerd/containerd/v2/core/content"
	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/buildkit/session"
	sessioncontent "github.com/moby/buildkit/session/content"
	"github.com/moby/buildkit/util/bklog"
	digest "github.com/opencontainers/go-digest"
	ocispecs "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/pkg/errors"
)

// cacheProvider reads blobs of a local cache directory through client
// sessions.
//
// A record imported by one build can be loaded and mounted by another build
// long after the importing session closed (linked builds, a persistent
// daemon). The directory is reachable only through a session that attached
// it, so every read looks for a live one: first the sessions of the group
// that triggers the read (ProviderForSession), then the importing session.
// When none serves the blob the read fails with an error saying so and how
// to fix it.
type cacheProvider struct {
	sm  *session.Manager
	src string
	// importer is the session that imported the cache; it may have ended.
	importer session.Group
	// bound is the group of the build that triggers reads; nil until
	// ProviderForSession.
	bound session.Group
	lazy  bool
	// ingests is the daemon's content store, known once the importer
	// resolves against a worker; a lazy read that fails verification aborts
	// its ingest there.
	ingests ingestManager
}

// ingestManager is the part of the daemon's content store that cleans up
// after a failed fetch.
type ingestManager interface {
	ListStatuses(ctx context.Context, filters ...string) ([]content.Status, error)
	Abort(ctx context.Context, ref string) error
}

var (
	_ content.Provider = &cacheProvider{}
	_ interface {
		ProviderForSession(session.Group) content.Provider
	} = &cacheProvider{}
	_ interface {
		UnlazySession(ocispecs.Descriptor) session.Group
	} = &cacheProvider{}
)

// ProviderForSession returns a copy of p that reads through the sessions of
// g, the build that needs the blob now, before the importing session.
func (p *cacheProvider) ProviderForSession(g session.Group) content.Provider {
	p2 := *p
	p2.bound = g
	return &p2
}

// UnlazySession tells the worker whether to pull and extract a layer while
// its record loads. Eager import asks for it through the importing session,
// which is alive while its build loads the records. Lazy import never asks:
// the layer is read when an op mounts it, through the session of that build.
func (p *cacheProvider) UnlazySession(ocispecs.Descriptor) session.Group {
	if p.lazy {
		return nil
	}
	return p.importer
}

// ReaderAt opens the blob through the first live session that serves the
// directory and holds it. The returned reader moves to another session if
// this one closes while reading. For a lazy import it checks the digest as
// it streams (sessionReaderAt.verify); eager import leaves that to the
// daemon's content store, as upstream does.
func (p *cacheProvider) ReaderAt(ctx context.Context, desc ocispecs.Descriptor) (content.ReaderAt, error) {
	r := &sessionReaderAt{p: p, ctx: ctx, desc: desc, tried: map[string]struct{}{}}
	if p.lazy && desc.Size > 0 && desc.Digest.Validate() == nil {
		r.digester = desc.Digest.Algorithm().Digester()
	}
	if err := r.open(); err != nil {
		return nil, err
	}
	return r, nil
}

// abortIngests aborts the daemon's ingests of dgst, so that a fetch that
// failed verification leaves nothing behind to resume.
func (p *cacheProvider) abortIngests(ctx context.Context, dgst digest.Digest) {
	if p.ingests == nil {
		return
	}
	statuses, err := p.ingests.ListStatuses(ctx)
	if err != nil {
		bklog.G(ctx).WithError(err).Warnf("local cache %s: listing ingests of corrupt blob %s", p.src, dgst)
		return
	}
	for _, st := range statuses {
		// The daemon's metadata store records the expected digest; a
		// plain store does not, but fetch refs end with the digest
		// (remotes.MakeRefKey).
		if st.Expected == dgst || strings.HasSuffix(st.Ref, dgst.String()) {
			if err := p.ingests.Abort(ctx, st.Ref); err != nil && !cerrdefs.IsNotFound(err) {
				bklog.G(ctx).WithError(err).Warnf("local cache %s: aborting ingest %s of corrupt blob %s", p.src, st.Ref, dgst)
			}
		}
	}
}

// sessionIDs lists the sessions to try, those of the bound group first.
func (p *cacheProvider) sessionIDs() []string {
	var ids []string
	seen := map[string]struct{}{}
	for _, g := range []session.Group{p.bound, p.importer} {
		for _, id := range session.AllSessionIDs(g) {
			if _, ok := seen[id]; ok {
				continue
			}
			seen[id] = struct{}{}
			ids = append(ids, id)
		}
	}
	return ids
}

// each calls fn with the store of each live session that serves the
// directory, skipping those in skip, until fn succeeds. Sessions that do not
// serve the store, lack the blob, or fail (closed meanwhile) are passed
// over; when all are, the error says which of those it was.
func (p *cacheProvider) each(ctx context.Context, dgst digest.Digest, skip map[string]struct{}, fn func(id string, cs content.Store) error) error {
	storeID := contentStoreIDPrefix + p.src
	var lacking, failed []string
	var lastErr error
	for _, id := range p.sessionIDs() {
		if _, ok := skip[id]; ok {
			continue
		}
		// noWait: a session of a running build is connected already, and
		// one that has gone will not come back.
		caller, err := p.sm.Get(ctx, id, true)
		if err != nil || caller == nil || !caller.Supports(contentInfoMethod) {
			continue
		}
		err = fn(id, sessioncontent.NewCallerStore(caller, storeID))
		switch {
		case err == nil:
			return nil
		case errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded):
			if ctx.Err() != nil {
				return err
			}
		case isUnknownStore(err, storeID):
			continue
		case cerrdefs.IsNotFound(err):
			lacking = append(lacking, id)
			continue
		}
		failed = append(failed, id)
		lastErr = err
	}
	switch {
	case len(lacking) > 0:
		return errors.Wrapf(cerrdefs.ErrNotFound,
			"local cache %s: blob %s is missing from the cache directory (served by session %s); the directory changed after the cache was imported: export the cache again, or import it without lazy=true",
			p.src, dgst, strings.Join(lacking, ", "))
	case len(failed) > 0:
		return errors.Wrapf(cerrdefs.ErrUnavailable,
			"local cache %s: could not read blob %s through session %s (%v): import the same directory in this build (buildctl --import-cache or buildx --cache-from type=local,src=%s), or import it without lazy=true",
			p.src, dgst, strings.Join(failed, ", "), lastErr, p.src)
	default:
		return errors.Wrapf(cerrdefs.ErrUnavailable,
			"local cache %s: no active session of this build serves the cache directory, needed to read blob %s: import the same directory in this build (buildctl --import-cache or buildx --cache-from type=local,src=%s), or import it without lazy=true",
			p.src, dgst, p.src)
	}
}
