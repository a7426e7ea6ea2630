package local

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	contentlocal "github.com/containerd/containerd/v2/plugins/content/local"
	cacheimport "github.com/moby/buildkit/cache/remotecache/v1"
	cacheimporttypes "github.com/moby/buildkit/cache/remotecache/v1/types"
	"github.com/moby/buildkit/session"
	sessioncontent "github.com/moby/buildkit/session/content"
	"github.com/moby/buildkit/util/contentutil"
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

	var mfst []byte
	if imageManifest {
		mfst, err = json.Marshal(ocispecs.Manifest{
			MediaType: ocispecs.MediaTypeImageManifest,
			Config:    cfgDesc,
			Layers:    c.layers,
		})
		c.manifest = c.write(t, ocispecs.MediaTypeImageManifest, mfst)
	} else {
		mfst, err = json.Marshal(ocispecs.Index{
			MediaType: ocispecs.MediaTypeImageIndex,
			Manifests: append(append([]ocispecs.Descriptor{}, c.layers...), cfgDesc),
		})
		c.manifest = c.write(t, ocispecs.MediaTypeImageIndex, mfst)
	}
	require.NoError(t, err)
	return c
}

func (c *testCache) write(t *testing.T, mediaType string, dt []byte) ocispecs.Descriptor {
	t.Helper()
	desc := ocispecs.Descriptor{MediaType: mediaType, Digest: digest.FromBytes(dt), Size: int64(len(dt))}
	require.NoError(t, content.WriteBlob(t.Context(), c.store, desc.Digest.String(), bytesReader(dt), desc))
	c.data[desc.Digest] = dt
	return desc
}

func (c *testCache) blobPath(dgst digest.Digest) string {
	return filepath.Join(c.dir, "blobs", dgst.Algorithm().String(), dgst.Encoded())
}

func (c *testCache) attrs(extra ...string) map[string]string {
	m := map[string]string{attrSrc: c.dir, attrDigest: c.manifest.Digest.String()}
	for i := 0; i+1 < len(extra); i += 2 {
		m[extra[i]] = extra[i+1]
	}
	return m
}

// startSession connects a client session to sm in-process, attaching the
// given content stores as the buildctl client does ("local:" + dir). With no
// stores it attaches no content service at all.
func startSession(t *testing.T, sm *session.Manager, stores map[string]content.Store) *session.Session {
	t.Helper()
	s, err := session.NewSession(t.Context(), "local-cache-test")
	require.NoError(t, err)
	if len(stores) > 0 {
		s.Allow(sessioncontent.NewAttachable(stores))
	}
	go func() {
		_ = s.Run(t.Context(), func(ctx context.Context, _ string, meta map[string][]string) (net.Conn, error) {
			client, server := net.Pipe()
			go func() {
				_ = sm.HandleConn(ctx, server, meta)
				_ = server.Close()
			}()
			return client, nil
		})
	}()
	t.Cleanup(func() { _ = s.Close() })

	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	_, err = sm.Get(ctx, s.ID(), false)
	require.NoError(t, err)
	return s
}

func serving(c *testCache) map[string]content.Store {
	return map[string]content.Store{contentStoreIDPrefix + c.dir: c.store}
}

func closeSession(t *testing.T, sm *session.Manager, s *session.Session) {
	t.Helper()
	require.NoError(t, s.Close())
	require.Eventually(t, func() bool {
		caller, err := sm.Get(t.Context(), s.ID(), true)
		return err == nil && caller == nil
	}, 5*time.Second, 10*time.Millisecond)
}

func newManager(t *testing.T) *session.Manager {
	t.Helper()
	sm, err := session.NewManager()
	require.NoError(t, err)
	return sm
}

// importLazy imports c lazily through a session that is closed afterwards,
// as happens when the importing build ends.
func importLazyThenClose(t *testing.T, sm *session.Manager, c *testCache) *cacheProvider {
	t.Helper()
	a := startSession(t, sm, serving(c))
	p, _, _, err := resolveImport(t.Context(), sm, session.NewGroup(a.ID()), c.attrs(attrLazy, "true"))
	require.NoError(t, err)
	closeSession(t, sm, a)
	return p
}

// readVia reads desc the way the worker does when a build mounts a lazy
// ref: through upstream's MultiProvider and DescriptorProviderPair, bound to
// the group of the build that triggers the read.
func readVia(t *testing.T, p *cacheProvider, g session.Group, desc ocispecs.Descriptor) ([]byte, error) {
	t.Helper()
	pair := cacheimport.DescriptorProviderPair{Descriptor: desc, Provider: p}
	mp := contentutil.NewMultiProvider(nil)
	mp.Add(desc.Digest, pair)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	return content.ReadBlob(ctx, contentutil.ProviderForSession(mp, g), desc)
}

func TestResolveImportAttrs(t *testing.T) {
	sm := newManager(t)
	c := newTestCache(t, false, "layer")
	s := startSession(t, sm, serving(c))
	g := session.NewGroup(s.ID())

	for _, tc := range []struct {
		name     string
		attrs    map[string]string
		wantLazy bool
		wantErr  []string
	}{
		{name: "default is eager", attrs: c.attrs()},
		{name: "true", attrs: c.attrs(attrLazy, "true"), wantLazy: true},
		{name: "false", attrs: c.attrs(attrLazy, "false")},
		{name: "1", attrs: c.attrs(attrLazy, "1"), wantLazy: true},
		{name: "invalid", attrs: c.attrs(attrLazy, "maybe"), wantErr: []string{"failed to parse lazy", `"maybe"`}},
		{name: "empty", attrs: c.attrs(attrLazy, ""), wantErr: []string{"failed to parse lazy"}},
		{name: "no digest", attrs: map[string]string{attrSrc: c.dir}, wantErr: []string{"requires explicit digest"}},
		{name: "bad digest", attrs: map[string]string{attrSrc: c.dir, attrDigest: "sha256:nope"}, wantErr: []string{"failed to parse digest", "sha256:nope"}},
		{name: "no src", attrs: map[string]string{attrDigest: c.manifest.Digest.String()}, wantErr: []string{"requires src"}},
		{name: "other dir", attrs: map[string]string{attrSrc: "/nonexistent", attrDigest: c.manifest.Digest.String()}, wantErr: []string{"no session of this build serves the cache directory /nonexistent"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, desc, _, err := resolveImport(t.Context(), sm, g, tc.attrs)
			if tc.wantErr != nil {
				require.Error(t, err)
				for _, s := range tc.wantErr {
					require.ErrorContains(t, err, s)
				}
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.wantLazy, p.lazy)
			require.Equal(t, c.manifest.Digest, desc.Digest)
			require.Equal(t, c.manifest.Size, desc.Size)
		})
	}
}

func TestResolveImporterRejectsBadLazy(t *testing.T) {
	sm := newManager(t)
	c := newTestCache(t, false, "layer")
	s := startSession(t, sm, serving(c))
	_, _, err := ResolveCacheImporterFunc(sm)(t.Context(), session.NewGroup(s.ID()), c.attrs(attrLazy, "maybe"))
	require.ErrorContains(t, err, `failed to parse lazy: strconv.ParseBool: parsing "maybe"`)
}

// Eager import must stay upstream's: the worker is asked to unlazy every
// layer with the importing session while the records load.
func TestEagerAsksUnlazyWithImportingSession(t *testing.T) {
	sm := newManager(t)
	c := newTestCache(t, false, "one", "two")
	s := startSession(t, sm, serving(c))
	p, _, _, err := resolveImport(t.Context(), sm, session.NewGroup(s.ID()), c.attrs())
	require.NoError(t, err)
	for _, l := range c.layers {
		pair := cacheimport.DescriptorProviderPair{Descriptor: l, Provider: p}
		require.Equal(t, []string{s.ID()}, session.AllSessionIDs(pair.UnlazySession(l)))
	}
}

func TestLazyDoesNotAskUnlazy(t *testing.T) {
	for _, imageManifest := range []bool{false, true} {
		sm := newManager(t)
		c := newTestCache(t, imageManifest, "one", "two")
		s := startSession(t, sm, serving(c))
		p, _, missing, err := resolveImport(t.Context(), sm, session.NewGroup(s.ID()), c.attrs(attrLazy, "true"))
		require.NoError(t, err)
		require.Empty(t, missing)
		for _, l := range c.layers {
			pair := cacheimport.DescriptorProviderPair{Descriptor: l, Provider: p}
			require.Nil(t, pair.UnlazySession(l), "image-manifest=%v", imageManifest)
		}
	}
}

// The session objection: the importing build has ended; a later build that
// attached the same directory must be able to read the lazily imported blob.
func TestLazyReadRebindsToCurrentSession(t *testing.T) {
	sm := newManager(t)
	c := newTestCache(t, false, "rebind me")
	p := importLazyThenClose(t, sm, c)

	b := startSession(t, sm, serving(c))
	dt, err := readVia(t, p, session.NewGroup(b.ID()), c.layers[0])
	require.NoError(t, err)
	require.Equal(t, c.data[c.layers[0].Digest], dt)

	// Without a group to rebind to, only the closed importer is left.
	_, err = content.ReadBlob(t.Context(), p, c.layers[0])
	require.ErrorContains(t, err, "no active session of this build serves the cache directory")
}

func TestLazyReadNoSessionServesStore(t *testing.T) {
	sm := newManager(t)
	c := newTestCache(t, false, "unreachable")
	other := newTestCache(t, false, "other")
	p := importLazyThenClose(t, sm, c)

	noContent := startSession(t, sm, nil)
	otherDir := startSession(t, sm, serving(other))
	_, err := readVia(t, p, session.NewGroup(noContent.ID(), otherDir.ID()), c.layers[0])
	require.Error(t, err)
	require.ErrorContains(t, err, "local cache "+c.dir+": no active session of this build serves the cache directory")
	require.ErrorContains(t, err, c.layers[0].Digest.String())
	require.ErrorContains(t, err, "buildctl --import-cache or buildx --cache-from type=local,src="+c.dir)
	require.ErrorContains(t, err, "lazy=true")
	require.NotContains(t, err.Error(), "client connection is closing")
}

func TestLazyReadGroupWithSeveralSessions(t *testing.T) {
	sm := newManager(t)
	c := newTestCache(t, false, "only one serves it")
	other := newTestCache(t, false, "other")
	noContent := startSession(t, sm, nil)
	otherDir := startSession(t, sm, serving(other))
	good := startSession(t, sm, serving(c))
	g := session.NewGroup(noContent.ID(), otherDir.ID(), good.ID())

	// Import picks the session that serves the directory, not the first.
	p, _, _, err := resolveImport(t.Context(), sm, g, c.attrs(attrLazy, "true"))
	require.NoError(t, err)
	require.Equal(t, []string{good.ID()}, session.AllSessionIDs(p.importer))

	dt, err := readVia(t, p, g, c.layers[0])
	require.NoError(t, err)
	require.Equal(t, c.data[c.layers[0].Digest], dt)
}

// A session can attach a store named "local:<dir>" whose content differs
// from the directory imported (the client rewrote it, another machine's
// path): the read must move on to a session that has the blob.
func TestLazyReadSessionLacksBlob(t *testing.T) {
	sm := newManager(t)
	c := newTestCache(t, false, "the blob")
	p := importLazyThenClose(t, sm, c)

	emptyStore, err := contentlocal.NewStore(t.TempDir())
	require.NoError(t, err)
	lacking := startSession(t, sm, map[string]content.Store{contentStoreIDPrefix + c.dir: emptyStore})

	_, err = readVia(t, p, session.NewGroup(lacking.ID()), c.layers[0])
	require.ErrorContains(t, err, "blob "+c.layers[0].Digest.String()+" is missing from the cache directory (served by session "+lacking.ID()+")")

	good := startSession(t, sm, serving(c))
	dt, err := readVia(t, p, session.NewGroup(lacking.ID(), good.ID()), c.layers[0])
	require.NoError(t, err)
	require.Equal(t, c.data[c.layers[0].Digest], dt)
}

func TestLazyReadSessionClosesBetweenInfoAndRead(t *testing.T) {
	sm := newManager(t)
	c := newTestCache(t, false, "moves to the next session")
	p := importLazyThenClose(t, sm, c)
	desc := c.layers[0]

	first := startSession(t, sm, serving(c))
	second := startSession(t, sm, serving(c))
	ra, err := p.ProviderForSession(session.NewGroup(first.ID(), second.ID())).ReaderAt(t.Context(), desc)
	require.NoError(t, err)
	defer ra.Close()
	require.Equal(t, first.ID(), ra.(*sessionReaderAt).id)
	closeSession(t, sm, first)

	buf := make([]byte, desc.Size)
	n, err := ra.ReadAt(buf, 0)
	require.NoError(t, err)
	require.Equal(t, c.data[desc.Digest], buf[:n])
	require.Equal(t, second.ID(), ra.(*sessionReaderAt).id)

	// With no session left, the error is ours, not gRPC's.
	only := startSession(t, sm, serving(c))
	ra2, err := p.ProviderForSession(session.NewGroup(only.ID())).ReaderAt(t.Context(), desc)
	require.NoError(t, err)
	defer ra2.Close()
	closeSession(t, sm, only)
	_, err = ra2.ReadAt(buf, 0)
	require.ErrorContains(t, err, "no active session of this build serves the cache directory")
	require.ErrorContains(t, err, desc.Digest.String())
}

func TestLazyReadDigestMismatch(t *testing.T) {
	sm := newManager(t)
	c := newTestCache(t, false, "original content")
	p := importLazyThenClose(t, sm, c)
	desc := c.layers[0]
	b := startSession(t, sm, serving(c))
	g := session.NewGroup(b.ID())

	// Same size, other bytes: only the digest can tell.
	require.NoError(t, os.WriteFile(c.blobPath(desc.Digest), []byte("corrupt content!"), 0o644))
	_, err := readVia(t, p, g, desc)
	require.ErrorContains(t, err, "local cache "+c.dir+": blob "+desc.Digest.String()+" is corrupt")

	require.NoError(t, os.WriteFile(c.blobPath(desc.Digest), []byte("short"), 0o644))
	_, err = readVia(t, p, g, desc)
	require.ErrorContains(t, err, "local cache "+c.dir+": blob "+desc.Digest.String()+" is truncated: 5 of 16 bytes")
}

// A corrupt blob must leave nothing in the daemon that breaks the next
// fetch: the daemon's fetch resumes a partial ingest, or commits one that
// holds every byte. Here the daemon is containerd's local content store,
// fetched into by buildkit's own contentutil.Copy, as an unlazy does.
func TestLazyReadCorruptLeavesNoIngest(t *testing.T) {
	sm := newManager(t)
	data := testimageData(3 << 20)
	c := newTestCache(t, false, string(data))
	p := importLazyThenClose(t, sm, c)
	desc := c.layers[0]
	daemon, err := contentlocal.NewStore(t.TempDir())
	require.NoError(t, err)
	p.ingests = daemon
	b := startSession(t, sm, serving(c))
	provider := p.ProviderForSession(session.NewGroup(b.ID()))

	bad := bytes.Clone(data)
	bad[len(bad)/2] ^= 0xff
	require.NoError(t, os.WriteFile(c.blobPath(desc.Digest), bad, 0o644))
	err = contentutil.Copy(t.Context(), daemon, provider, desc, "", nil)
	require.ErrorContains(t, err, "blob "+desc.Digest.String()+" is corrupt")
	statuses, err := daemon.ListStatuses(t.Context())
	require.NoError(t, err)
	require.Empty(t, statuses, "no partial ingest is left")

	require.NoError(t, os.WriteFile(c.blobPath(desc.Digest), data, 0o644))
	require.NoError(t, contentutil.Copy(t.Context(), daemon, provider, desc, "", nil))
	got, err := content.ReadBlob(t.Context(), daemon, desc)
	require.NoError(t, err)
	require.Equal(t, data, got)
}

// A resumed fetch starts reading past offset 0 (the daemon holds the first
// part from an earlier attempt); the check must still cover the whole blob.
func TestLazyReadResumedFetchIsVerified(t *testing.T) {
	sm := newManager(t)
	data := testimageData(1 << 20)
	c := newTestCache(t, false, string(data))
	p := importLazyThenClose(t, sm, c)
	desc := c.layers[0]
	b := startSession(t, sm, serving(c))
	provider := p.ProviderForSession(session.NewGroup(b.ID()))
	half := desc.Size / 2

	readTail := func() error {
		ra, err := provider.ReaderAt(t.Context(), desc)
		require.NoError(t, err)
		defer ra.Close()
		_, err = io.ReadAll(io.NewSectionReader(ra, half, desc.Size-half))
		return err
	}
	require.NoError(t, readTail())

	bad := bytes.Clone(data)
	bad[10] ^= 0xff // in the part the daemon would already hold
	require.NoError(t, os.WriteFile(c.blobPath(desc.Digest), bad, 0o644))
	require.ErrorContains(t, readTail(), "blob "+desc.Digest.String()+" is corrupt")
}

// testimageData is incompressible test content of n bytes.
func testimageData(n int) []byte {
	out := make([]byte, 0, n+32)
	for i := 0; len(out) < n; i++ {
		sum := digest.FromString(strconv.Itoa(i))
		out = append(out, sum.Encoded()...)
	}
	return out[:n]
}

// A blob deleted from the directory must not fail the build later: lazy
// import finds it at import (Info only) and the importer leaves it out, so
// the records that need it are not loaded and their steps run again, as
// with eager import. The blobs that are there stay lazy.
func TestLazyImportMissingBlob(t *testing.T) {
	for _, imageManifest := range []bool{false, true} {
		sm := newManager(t)
		c := newTestCache(t, imageManifest, "kept", "deleted")
		kept, deleted := c.layers[0], c.layers[1]
		require.NoError(t, os.Remove(c.blobPath(deleted.Digest)))
		s := startSession(t, sm, serving(c))
		g := session.NewGroup(s.ID())

		p, _, missing, err := resolveImport(t.Context(), sm, g, c.attrs(attrLazy, "true"))
		require.NoError(t, err)
		require.Equal(t, map[digest.Digest]struct{}{deleted.Digest: {}}, missing, "image-manifest=%v", imageManifest)
		require.Nil(t, p.UnlazySession(kept))

		m, err := readCacheManifest(t.Context(), p, c.manifest)
		require.NoError(t, err)
		require.Equal(t, c.layers, m.layers)
		require.Equal(t, cacheimporttypes.CacheConfigMediaTypeV0, m.config.MediaType)

		_, err = readVia(t, p, g, deleted)
		require.ErrorContains(t, err, "blob "+deleted.Digest.String()+" is missing from the cache directory")

		// Eager import does not check: it notices while loading, as upstream.
		_, _, missing, err = resolveImport(t.Context(), sm, g, c.attrs())
		require.NoError(t, err)
		require.Empty(t, missing)
	}
}

func TestResolveExporterPicksServingSession(t *testing.T) {
	sm := newManager(t)
	dest := newTestCache(t, false)
	noContent := startSession(t, sm, nil)
	good := startSession(t, sm, serving(dest))

	_, id, err := findStore(t.Context(), sm, session.NewGroup(noContent.ID(), good.ID()), dest.dir, "")
	require.NoError(t, err)
	require.Equal(t, good.ID(), id)

	_, err = ResolveCacheExporterFunc(sm)(t.Context(), session.NewGroup(noContent.ID()), map[string]string{attrDest: dest.dir})
	require.ErrorContains(t, err, "no session of this build serves the cache directory "+dest.dir)

	_, err = ResolveCacheExporterFunc(sm)(t.Context(), session.NewGroup(good.ID()), map[string]string{attrDest: dest.dir, attrOCIMediatypes: "nope"})
	require.ErrorContains(t, err, "failed to parse oci-mediatypes")
}

func bytesReader(b []byte) *bytes.Reader { return bytes.NewReader(b) }
