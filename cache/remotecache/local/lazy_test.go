package local

import (
	"bytes"
	"context"
	"net"
	"os"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	contentlocal "github.com/containerd/containerd/v2/plugins/content/local"
	cacheimport "github.com/moby/buildkit/cache/remotecache/v1"
	"github.com/moby/buildkit/session"
	sessioncontent "github.com/moby/buildkit/session/content"
	"github.com/moby/buildkit/util/contentutil"
	ocispecs "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/stretchr/testify/require"
)

func (c *testCache) attrs(extra ...string) map[string]string {
	m := map[string]string{attrSrc: c.dir, attrDigest: c.manifest.Digest.String()}
	for i := 0; i+1 < len(extra); i += 2 {
		m[extra[i]] = extra[i+1]
	}
	return m
}

// startSession connects a client session to sm in-process, attaching the
// given content stores as buildctl does ("local:" + dir). With no stores it
// attaches no content service at all.
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

func resolveLazy(t *testing.T, sm *session.Manager, g session.Group, c *testCache) *cacheProvider {
	t.Helper()
	imp, desc, err := ResolveCacheImporterFunc(sm)(t.Context(), g, c.attrs(attrLazy, "true"))
	require.NoError(t, err)
	require.Equal(t, c.manifest.Digest, desc.Digest)
	require.Equal(t, c.manifest.Size, desc.Size)
	require.IsType(t, &lazyImporter{}, imp)
	return imp.(*lazyImporter).p
}

// importLazyThenClose imports c lazily through a session that is closed
// afterwards, as happens when the importing build ends.
func importLazyThenClose(t *testing.T, sm *session.Manager, c *testCache) *cacheProvider {
	t.Helper()
	a := startSession(t, sm, serving(c))
	p := resolveLazy(t, sm, session.NewGroup(a.ID()), c)
	closeSession(t, sm, a)
	return p
}

// readVia reads desc the way the worker does when a build mounts a lazy
// ref: through MultiProvider and DescriptorProviderPair, bound to the group
// of the build that triggers the read.
func readVia(t *testing.T, p *cacheProvider, g session.Group, desc ocispecs.Descriptor) ([]byte, error) {
	t.Helper()
	pair := cacheimport.DescriptorProviderPair{Descriptor: desc, Provider: p}
	mp := contentutil.NewMultiProvider(nil)
	mp.Add(desc.Digest, pair)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	return content.ReadBlob(ctx, contentutil.ProviderForSession(mp, g), desc)
}

func TestResolveImporterLazyAttr(t *testing.T) {
	sm := newManager(t)
	c := newTestCache(t, false, "layer")
	s := startSession(t, sm, serving(c))
	g := session.NewGroup(s.ID())

	for _, tc := range []struct {
		name     string
		attrs    map[string]string
		wantLazy bool
		wantErr  string
	}{
		{name: "default is eager", attrs: c.attrs()},
		{name: "true", attrs: c.attrs(attrLazy, "true"), wantLazy: true},
		{name: "false", attrs: c.attrs(attrLazy, "false")},
		{name: "1", attrs: c.attrs(attrLazy, "1"), wantLazy: true},
		{name: "invalid", attrs: c.attrs(attrLazy, "maybe"), wantErr: `failed to parse lazy: strconv.ParseBool: parsing "maybe": invalid syntax`},
		{name: "empty", attrs: c.attrs(attrLazy, ""), wantErr: `failed to parse lazy: strconv.ParseBool: parsing "": invalid syntax`},
		{name: "bad digest", attrs: map[string]string{attrSrc: c.dir, attrDigest: "sha256:nope", attrLazy: "true"}, wantErr: `failed to parse digest "sha256:nope"`},
		{name: "other dir", attrs: map[string]string{attrSrc: "/nonexistent", attrDigest: c.manifest.Digest.String(), attrLazy: "true"}, wantErr: "local cache /nonexistent: no session of this build holds cache manifest " + c.manifest.Digest.String()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			imp, desc, err := ResolveCacheImporterFunc(sm)(t.Context(), g, tc.attrs)
			if tc.wantErr != "" {
				require.ErrorContains(t, err, tc.wantErr)
				return
			}
			require.NoError(t, err)
			_, lazy := imp.(*lazyImporter)
			require.Equal(t, tc.wantLazy, lazy)
			require.Equal(t, c.manifest.Digest, desc.Digest)
			require.Equal(t, c.manifest.Size, desc.Size)
		})
	}
}

// Without lazy, resolving stays upstream's: the first session of the group
// is used as is, and the exporter does not probe it.
func TestResolveWithoutLazyIsUpstreams(t *testing.T) {
	sm := newManager(t)
	c := newTestCache(t, false, "layer")
	noContent := startSession(t, sm, nil)
	good := startSession(t, sm, serving(c))
	g := session.NewGroup(noContent.ID(), good.ID())

	_, err := ResolveCacheExporterFunc(sm)(t.Context(), session.NewGroup(noContent.ID()), map[string]string{attrDest: "/not/served"})
	require.NoError(t, err, "the exporter fails when it writes, as upstream's, not while it is configured")

	_, _, err = ResolveCacheImporterFunc(sm)(t.Context(), g, c.attrs())
	require.Error(t, err, "eager import asks the first session only")
	require.NotContains(t, err.Error(), "local cache "+c.dir)

	// Lazy import looks for the session that holds the manifest.
	p := resolveLazy(t, sm, g, c)
	require.Equal(t, []string{good.ID()}, session.AllSessionIDs(p.importer))
}

// A lazy import leaves every layer to be read when an op mounts it: the
// worker is asked to unlazy none of them while their records load.
func TestLazyDoesNotAskUnlazy(t *testing.T) {
	sm := newManager(t)
	c := newTestCache(t, false, "one", "two")
	s := startSession(t, sm, serving(c))
	p := resolveLazy(t, sm, session.NewGroup(s.ID()), c)
	for _, l := range c.layers {
		pair := cacheimport.DescriptorProviderPair{Descriptor: l, Provider: p}
		require.Nil(t, pair.UnlazySession(l))
	}
}

// The importing build has ended (moby/buildkit#6573's objection): a later
// build that attached the same directory must be able to read the lazily
// imported blob.
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

	// The manifest, read once at import, is served from memory.
	dt, err = content.ReadBlob(t.Context(), p, c.manifest)
	require.NoError(t, err)
	require.Equal(t, c.data[c.manifest.Digest], dt)
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
	require.ErrorContains(t, err, "local cache "+c.dir+": no active session of this build serves the cache directory, needed to read blob "+c.layers[0].Digest.String())
	require.ErrorContains(t, err, "import the same directory in this build (buildctl --import-cache or buildx --cache-from type=local,src="+c.dir+"), or import it without lazy=true")
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

	p := resolveLazy(t, sm, g, c)
	require.Equal(t, []string{good.ID()}, session.AllSessionIDs(p.importer))
	dt, err := readVia(t, p, g, c.layers[0])
	require.NoError(t, err)
	require.Equal(t, c.data[c.layers[0].Digest], dt)
}

// A session can attach a store named "local:<dir>" whose content differs
// from the directory imported (rewritten since, another machine's path):
// the read must move on to a session that has the blob.
func TestLazyReadSessionLacksBlob(t *testing.T) {
	sm := newManager(t)
	c := newTestCache(t, false, "the blob")
	p := importLazyThenClose(t, sm, c)

	// A rewritten directory: it holds the manifest, not the layer.
	rewritten, err := contentlocal.NewStore(t.TempDir())
	require.NoError(t, err)
	require.NoError(t, content.WriteBlob(t.Context(), rewritten, "m", bytes.NewReader(c.data[c.manifest.Digest]), c.manifest))
	lacking := startSession(t, sm, map[string]content.Store{contentStoreIDPrefix + c.dir: rewritten})

	_, err = readVia(t, p, session.NewGroup(lacking.ID()), c.layers[0])
	require.ErrorContains(t, err, "local cache "+c.dir+": blob "+c.layers[0].Digest.String()+" is missing from the cache directory (served by session "+lacking.ID()+")")

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
	sessionOf := func(ra content.ReaderAt) string {
		return ra.(*verifiedReaderAt).ReaderAt.(*failoverReaderAt).id
	}

	first := startSession(t, sm, serving(c))
	second := startSession(t, sm, serving(c))
	ra, err := p.ProviderForSession(session.NewGroup(first.ID(), second.ID())).ReaderAt(t.Context(), desc)
	require.NoError(t, err)
	defer ra.Close()
	require.Equal(t, first.ID(), sessionOf(ra))
	closeSession(t, sm, first)

	buf := make([]byte, desc.Size)
	n, err := ra.ReadAt(buf, 0)
	require.NoError(t, err)
	require.Equal(t, c.data[desc.Digest], buf[:n])
	require.Equal(t, second.ID(), sessionOf(ra))

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
// fetch. Here the daemon is containerd's local content store, fetched into
// by contentutil.Copy, as an unlazy does.
func TestLazyReadCorruptLeavesNoIngest(t *testing.T) {
	sm := newManager(t)
	data := blobData(3 << 20)
	c := newTestCache(t, false, string(data))
	p := importLazyThenClose(t, sm, c)
	desc := c.layers[0]
	daemon, err := contentlocal.NewStore(t.TempDir())
	require.NoError(t, err)
	p.ingests = daemon
	b := startSession(t, sm, serving(c))
	provider := p.ProviderForSession(session.NewGroup(b.ID()))

	// Another build fetching the same blob under another ref (another
	// media type) must keep its ingest.
	other, err := content.OpenWriter(t.Context(), daemon, content.WithRef("other-fetch"), content.WithDescriptor(desc))
	require.NoError(t, err)
	_, err = other.Write(data[:1<<20])
	require.NoError(t, err)
	require.NoError(t, other.Close())

	bad := bytes.Clone(data)
	bad[len(bad)/2] ^= 0xff
	require.NoError(t, os.WriteFile(c.blobPath(desc.Digest), bad, 0o644))
	err = contentutil.Copy(t.Context(), daemon, provider, desc, "", nil)
	require.ErrorContains(t, err, "blob "+desc.Digest.String()+" is corrupt")
	statuses, err := daemon.ListStatuses(t.Context())
	require.NoError(t, err)
	require.Len(t, statuses, 1, "no partial ingest of the failed fetch is left")
	require.Equal(t, "other-fetch", statuses[0].Ref)
	require.Equal(t, int64(1<<20), statuses[0].Offset)
	require.NoError(t, daemon.Abort(t.Context(), "other-fetch"))

	require.NoError(t, os.WriteFile(c.blobPath(desc.Digest), data, 0o644))
	require.NoError(t, contentutil.Copy(t.Context(), daemon, provider, desc, "", nil))
	got, err := content.ReadBlob(t.Context(), daemon, desc)
	require.NoError(t, err)
	require.Equal(t, data, got)
}

// A blob deleted from the directory must not fail the build later: lazy
// import finds it at import (Info only), and the importer reads a manifest
// without it, so the records that need it get no result and their steps run
// again, as with eager import. The blobs that are there stay lazy.
func TestLazyImportMissingBlob(t *testing.T) {
	for _, imageManifest := range []bool{false, true} {
		sm := newManager(t)
		c := newTestCache(t, imageManifest, "kept", "deleted")
		kept, deleted := c.layers[0], c.layers[1]
		require.NoError(t, os.Remove(c.blobPath(deleted.Digest)))
		s := startSession(t, sm, serving(c))
		g := session.NewGroup(s.ID())

		p := resolveLazy(t, sm, g, c)
		dt, err := content.ReadBlob(t.Context(), p, c.manifest)
		require.NoError(t, err)
		layers, err := cacheLayers(dt)
		require.NoError(t, err)
		require.Equal(t, []ocispecs.Descriptor{kept}, layers, "image-manifest=%v", imageManifest)

		_, err = readVia(t, p, g, deleted)
		require.ErrorContains(t, err, "blob "+deleted.Digest.String()+" is missing from the cache directory")
	}
}
