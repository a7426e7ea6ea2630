package client

import (
	"path/filepath"
	"testing"

	"github.com/gofrs/flock"
	"github.com/stretchr/testify/require"
)

// A lazy import holds off a concurrent reset of its directory until the
// solve releases it; then the reset cleans up.
func TestLockLazyCacheImportsHoldsOffReset(t *testing.T) {
	ctx := t.Context()
	dir, cs, _ := setupCacheStore(ctx, t, []byte(`{}`), [][]byte{[]byte("layer")}, "latest")
	other, _, _ := setupCacheStore(ctx, t, []byte(`{}`), nil, "latest")
	orphan := writeBlob(ctx, t, cs, []byte("orphan: read lazily by the build"))

	release := lockLazyCacheImports(ctx, []string{dir, other})
	err := resetCacheStore(ctx, cs, dir, flock.New(filepath.Join(dir, "cache.lock")))
	require.ErrorContains(t, err, "cache store is in use, skipping cleanup")
	require.Contains(t, listDigests(ctx, t, cs), orphan)

	release()
	release() // the deferred call after the explicit one
	require.NoError(t, resetCacheStore(ctx, cs, dir, flock.New(filepath.Join(dir, "cache.lock"))))
	require.NotContains(t, listDigests(ctx, t, cs), orphan)
	locked, err := flock.New(filepath.Join(other, "cache.lock")).TryLock()
	require.NoError(t, err)
	require.True(t, locked, "every directory's lock is released")
}

// Exports take the same lock shared: a lazy import does not hold them off.
func TestLockLazyCacheImportsSharesWithExports(t *testing.T) {
	ctx := t.Context()
	dir, cs, _ := setupCacheStore(ctx, t, []byte(`{}`), nil, "latest")
	release := lockLazyCacheImports(ctx, []string{dir})
	defer release()

	export := &cacheExportStore{Store: cs, lock: flock.New(filepath.Join(dir, "cache.lock"))}
	defer export.Close()
	writeBlob(ctx, t, export, []byte("exported while imported lazily"))
	require.True(t, export.lock.RLocked())
}
