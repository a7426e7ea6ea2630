// Package local implements the "local" cache backend: cache exported to, and
// imported from, a directory on the client, reached only through a content
// store that the client's session attaches as "local:" + directory.
//
// Besides upstream's attributes, the importer takes lazy=<false|true>. With
// lazy=true, imported layers stay blob-only refs until an op mounts them, and
// every later read goes through a live session of the build that needs the
// blob (see cacheProvider), never through a session that may have ended.
package local

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/buildkit/cache/remotecache"
	"github.com/moby/buildkit/session"
	sessioncontent "github.com/moby/buildkit/session/content"
	"github.com/moby/buildkit/util/bklog"
	"github.com/moby/buildkit/util/compression"
	"github.com/moby/buildkit/util/progress"
	digest "github.com/opencontainers/go-digest"
	ocispecs "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/pkg/errors"
)

const (
	attrDigest        = "digest"
	attrSrc           = "src"
	attrDest          = "dest"
	attrLazy          = "lazy"
	attrImageManifest = "image-manifest"
	attrOCIMediatypes = "oci-mediatypes"

	contentStoreIDPrefix = "local:"

	// sessionWaitTimeout bounds how long resolving waits for a session of
	// the calling build to connect, as upstream does.
	sessionWaitTimeout = 5 * time.Second
)

// contentInfoMethod is the gRPC method a session must expose to serve any
// content store at all.
const contentInfoMethod = "/containerd.services.content.v1.Content/Info"

type exporter struct {
	remotecache.Exporter
}

func (*exporter) Name() string {
	return "exporting cache to client directory"
}

// ResolveCacheExporterFunc for "local" cache exporter.
func ResolveCacheExporterFunc(sm *session.Manager) remotecache.ResolveCacheExporterFunc {
	return func(ctx context.Context, g session.Group, attrs map[string]string) (remotecache.Exporter, error) {
		dest := attrs[attrDest]
		if dest == "" {
			return nil, errors.New("local cache exporter requires dest")
		}
		compressionConfig, err := compression.ParseAttributes(attrs)
		if err != nil {
			return nil, err
		}
		ociMediatypes, err := parseBool(attrs, attrOCIMediatypes, true)
		if err != nil {
			return nil, err
		}
		// Without OCI media types an image manifest cannot be written, so
		// the default follows oci-mediatypes unless set explicitly.
		imageManifest, err := parseBool(attrs, attrImageManifest, ociMediatypes)
		if err != nil {
			return nil, err
		}
		cs, _, err := findStore(ctx, sm, g, dest, "")
		if err != nil {
			return nil, err
		}
		return &exporter{remotecache.NewExporter(cs, "", ociMediatypes, imageManifest, compressionConfig)}, nil
	}
}

// ResolveCacheImporterFunc for "local" cache importer.
func ResolveCacheImporterFunc(sm *session.Manager) remotecache.ResolveCacheImporterFunc {
	return func(ctx context.Context, g session.Group, attrs map[string]string) (remotecache.Importer, ocispecs.Descriptor, error) {
		p, desc, missing, err := resolveImport(ctx, sm, g, attrs)
		if err != nil {
			return nil, ocispecs.Descriptor{}, err
		}
		return newImporter(p, missing), desc, nil
	}
}

// resolveImport parses the import attributes, picks the session of g that
// serves src and holds the cache manifest, and returns the provider the
// importer reads through. A lazy import also returns the layer blobs the
// manifest lists that the directory lacks.
func resolveImport(ctx context.Context, sm *session.Manager, g session.Group, attrs map[string]string) (*cacheProvider, ocispecs.Descriptor, map[digest.Digest]struct{}, error) {
	dgstStr := attrs[attrDigest]
	if dgstStr == "" {
		return nil, ocispecs.Descriptor{}, nil, errors.New("local cache importer requires explicit digest")
	}
	dgst, err := digest.Parse(dgstStr)
	if err != nil {
		return nil, ocispecs.Descriptor{}, nil, errors.Wrapf(err, "failed to parse %s %q", attrDigest, dgstStr)
	}
	src := attrs[attrSrc]
	if src == "" {
		return nil, ocispecs.Descriptor{}, nil, errors.New("local cache importer requires src")
	}
	lazy, err := parseBool(attrs, attrLazy, false)
	if err != nil {
		return nil, ocispecs.Descriptor{}, nil, err
	}

	cs, sessionID, err := findStore(ctx, sm, g, src, dgst)
	if err != nil {
		return nil, ocispecs.Descriptor{}, nil, err
	}
	info, err := cs.Info(ctx, dgst)
	if err != nil {
		return nil, ocispecs.Descriptor{}, nil, err
	}
	desc := ocispecs.Descriptor{
		// The media type stays empty: the importer detects it from the
		// blob, as index.json does not record it reliably.
		Digest: dgst,
		Size:   info.Size,
	}

	p := &cacheProvider{
		sm:       sm,
		src:      src,
		importer: session.NewGroup(sessionID),
		lazy:     lazy,
	}
	var missing map[digest.Digest]struct{}
	if lazy {
		m, err := readCacheManifest(ctx, cs, desc)
		if err != nil {
			return nil, ocispecs.Descriptor{}, nil, err
		}
		missing, err = missingLayers(ctx, cs, m)
		if err != nil {
			return nil, ocispecs.Descriptor{}, nil, errors.Wrapf(err, "failed to check layer blobs of local cache %s", src)
		}
		if len(missing) > 0 {
			// Eager import notices a missing blob while loading and drops
			// the record. Do the same up front (see importer), so the build
			// reruns those steps instead of failing later at mount or at
			// cache export.
			msg := fmt.Sprintf("lazy local cache %s: %d of %d layer blobs are missing from the directory; steps that need them will run again", src, len(missing), len(m.layers))
			bklog.G(ctx).Warn(msg)
			progress.OneOff(ctx, msg)(nil)
		}
	}
	return p, desc, missing, nil
}

// findStore returns the content store "local:"+dir of the first session of g
// that serves it and, when dgst is set, holds dgst. Upstream takes the first
// session of the group; a group may hold several sessions of which only one
// attached the directory.
func findStore(ctx context.Context, sm *session.Manager, g session.Group, dir string, dgst digest.Digest) (content.Store, string, error) {
	ids := session.AllSessionIDs(g)
	if len(ids) == 0 {
		return nil, "", errors.New("local cache exporter/importer requires session")
	}
	storeID := contentStoreIDPrefix + dir
	probe := dgst
	if probe == "" {
		// Any digest tells whether the store is attached: an attached store
		// answers "not found" for the blob, a missing one "unknown store".
		probe = digest.FromString(storeID)
	}
	var lacking error
	for _, id := range ids {
		caller, err := waitSession(ctx, sm, id)
		if err != nil || caller == nil || !caller.Supports(contentInfoMethod) {
			continue
		}
		cs := sessioncontent.NewCallerStore(caller, storeID)
		_, err = cs.Info(ctx, probe)
		switch {
		case err == nil, dgst == "" && cerrdefs.IsNotFound(err) && !isUnknownStore(err, storeID):
			return cs, id, nil
		case cerrdefs.IsNotFound(err) && !isUnknownStore(err, storeID):
			lacking = errors.Wrapf(err, "cache directory %s does not hold %s", dir, dgst)
		}
	}
	if lacking != nil {
		return nil, "", lacking
	}
	return nil, "", errors.Errorf("no session of this build serves the cache directory %s (content store %q)", dir, storeID)
}

func waitSession(ctx context.Context, sm *session.Manager, id string) (session.Caller, error) {
	ctx, cancel := context.WithTimeoutCause(ctx, sessionWaitTimeout, errors.WithStack(context.DeadlineExceeded))
	defer cancel()
	return sm.Get(ctx, id, false)
}

// isUnknownStore reports whether err is the session's answer for a store ID
// it does not serve, as opposed to a blob missing from a store it serves.
// Both arrive as "not found"; only the text tells them apart.
func isUnknownStore(err error, storeID string) bool {
	return err != nil && strings.Contains(err.Error(), "unknown store "+storeID)
}

func parseBool(attrs map[string]string, key string, def bool) (bool, error) {
	v, ok := attrs[key]
	if !ok {
		return def, nil
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		return false, errors.Wrapf(err, "failed to parse %s", key)
	}
	return b, nil
}
