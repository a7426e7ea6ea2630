package local

import (
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/moby/buildkit/session"
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
