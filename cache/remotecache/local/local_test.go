package local

import (
	"bytes"
	"context"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	contentlocal "github.com/containerd/containerd/v2/plugins/content/local"
	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/buildkit/session"
	sessioncontent "github.com/moby/buildkit/session/content"
	digest "github.com/opencontainers/go-digest"
	ocispecs "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/stretchr/testify/require"
)

func TestResolveCacheImporterFuncInvalidLazy(t *testing.T) {
	_, _, err := ResolveCacheImporterFunc(nil)(t.Context(), nil, map[string]string{
		attrDigest: digest.FromString("index").String(),
		attrSrc:    "/cache",
		attrLazy:   "maybe",
	})
	require.ErrorContains(t, err, `failed to parse lazy: strconv.ParseBool: parsing "maybe"`)
}

func TestLocalCacheProviderBoundToNoSession(t *testing.T) {
	sm, err := session.NewManager()
	require.NoError(t, err)
	// A read bound to no session fails at once: it neither falls back to
	// the importing build's session nor returns nothing.
	p := newLocalCacheProvider(sm, "/cache", session.NewGroup("importer"))
	bound := p.ProviderForSession(nil)
	_, err = bound.ReaderAt(t.Context(), ocispecs.Descriptor{Digest: digest.FromString("blob")})
	require.ErrorIs(t, err, session.ErrNoActiveSessions)
	_, err = bound.(content.InfoProvider).Info(t.Context(), digest.FromString("blob"))
	require.ErrorIs(t, err, session.ErrNoActiveSessions)
}

func TestLocalCacheProviderInfoPerSession(t *testing.T) {
	ctx := t.Context()
	blob := []byte("a lazily imported cache layer")
	dgst := digest.FromBytes(blob)

	sm, err := session.NewManager()
	require.NoError(t, err)
	// Build A's client has the blob in its directory; build B's, at the
	// same path, does not.
	storeA := newBlockingStore(t, blob)
	sessionA := startContentSession(t, sm, storeA)
	sessionB := startContentSession(t, sm, newBlockingStore(t, nil))

	p := newLocalCacheProvider(sm, "/cache", session.NewGroup(sessionA.ID()))
	boundA := p.ProviderForSession(session.NewGroup(sessionA.ID())).(content.InfoProvider)
	boundB := p.ProviderForSession(session.NewGroup(sessionB.ID())).(content.InfoProvider)

	t.Run("flight", func(t *testing.T) {
		// B's lookup does not wait for, nor take the answer of, A's
		// lookup in flight.
		release := storeA.block()
		errCh := make(chan error, 1)
		go func() {
			_, err := boundA.Info(ctx, dgst)
			errCh <- err
		}()
		<-storeA.entered
		time.AfterFunc(100*time.Millisecond, release)
		_, err := boundB.Info(ctx, dgst)
		require.Truef(t, cerrdefs.IsNotFound(err), "B's client has no such blob, got err=%v", err)
		require.NoError(t, <-errCh)
	})

	t.Run("memo", func(t *testing.T) {
		info, err := boundA.Info(ctx, dgst)
		require.NoError(t, err)
		require.Equal(t, int64(len(blob)), info.Size)
		// A found the blob, but B's client does not have it.
		_, err = boundB.Info(ctx, dgst)
		require.Truef(t, cerrdefs.IsNotFound(err), "B's client has no such blob, got err=%v", err)
		_, err = p.ProviderForSession(session.NewGroup(sessionB.ID())).ReaderAt(ctx, ocispecs.Descriptor{Digest: dgst})
		require.Truef(t, cerrdefs.IsNotFound(err), "B's client has no such blob, got err=%v", err)
		// The same sessions, in a group made anew, are answered from
		// the memo, without asking A's client again.
		n := storeA.infos.Load()
		_, err = p.ProviderForSession(session.NewGroup(sessionA.ID())).(content.InfoProvider).Info(ctx, dgst)
		require.NoError(t, err)
		_, err = p.Info(ctx, dgst)
		require.NoError(t, err)
		require.Equal(t, n, storeA.infos.Load())
	})
}

// blockingStore counts the Info calls a client's directory serves, and
// holds them while blocked.
type blockingStore struct {
	content.Store
	infos   atomic.Int64
	entered chan struct{}
	mu      sync.Mutex
	wait    chan struct{}
}

func newBlockingStore(t *testing.T, blob []byte) *blockingStore {
	t.Helper()
	store, err := contentlocal.NewStore(t.TempDir())
	require.NoError(t, err)
	if blob != nil {
		require.NoError(t, content.WriteBlob(t.Context(), store, "blob", bytes.NewReader(blob), ocispecs.Descriptor{Digest: digest.FromBytes(blob), Size: int64(len(blob))}))
	}
	return &blockingStore{Store: store, entered: make(chan struct{}, 1)}
}

// block holds the next Info calls until release is called.
func (s *blockingStore) block() (release func()) {
	wait := make(chan struct{})
	s.mu.Lock()
	s.wait = wait
	s.mu.Unlock()
	return func() {
		s.mu.Lock()
		s.wait = nil
		s.mu.Unlock()
		close(wait)
	}
}

func (s *blockingStore) Info(ctx context.Context, dgst digest.Digest) (content.Info, error) {
	s.infos.Add(1)
	s.mu.Lock()
	wait := s.wait
	s.mu.Unlock()
	if wait != nil {
		select {
		case s.entered <- struct{}{}:
		default:
		}
		<-wait
	}
	return s.Store.Info(ctx, dgst)
}

func startContentSession(t *testing.T, sm *session.Manager, store content.Store) *session.Session {
	t.Helper()
	s, err := session.NewSession(t.Context(), "local-cache-test")
	require.NoError(t, err)
	s.Allow(sessioncontent.NewAttachable(map[string]content.Store{contentStoreIDPrefix + "/cache": store}))
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

	ctx, cancel := context.WithTimeoutCause(t.Context(), time.Second, nil)
	defer cancel()
	_, err = sm.Get(ctx, s.ID(), false)
	require.NoError(t, err)
	return s
}
