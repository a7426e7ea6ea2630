package client

import (
	"context"
	"path/filepath"
	"time"

	"github.com/gofrs/flock"
	"github.com/moby/buildkit/util/bklog"
)

// lockLazyCacheImports takes the shared lock of each local cache directory
// imported with lazy=true, the lock that cache exports take shared and a
// reset=true export takes exclusively for its cleanup. An eager import reads
// every layer it uses while the records load; a lazy one reads a layer when
// an op mounts it, at any time until the solve ends. Holding the lock that
// long makes a concurrent reset skip its cleanup ("cache store is in use")
// instead of deleting blobs this build may still read.
//
// A directory where the lock cannot be taken, such as a read-only one
// without cache.lock, is imported without it, with a warning. The returned
// function releases the locks; it is safe to call more than once.
func lockLazyCacheImports(ctx context.Context, dirs []string) func() {
	var locks []*flock.Flock
	for _, dir := range dirs {
		l := flock.New(filepath.Join(dir, "cache.lock"))
		if _, err := l.TryRLockContext(ctx, 100*time.Millisecond); err != nil {
			bklog.G(ctx).WithError(err).WithField("cache_store_path", dir).Warn("lazy cache import: cannot lock cache store; a concurrent export with reset=true may delete blobs this build still reads")
			continue
		}
		locks = append(locks, l)
	}
	return func() {
		for _, l := range locks {
			if err := l.Close(); err != nil {
				bklog.G(ctx).WithError(err).WithField("cache_store_path", filepath.Dir(l.Path())).Warn("failed to unlock cache store")
			}
		}
		locks = nil
	}
}
