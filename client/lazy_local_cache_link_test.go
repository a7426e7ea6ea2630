package client

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/moby/buildkit/util/testutil/cachetest"
	"github.com/moby/buildkit/util/testutil/integration"
	digest "github.com/opencontainers/go-digest"
	"github.com/stretchr/testify/require"
)

func init() {
	allTests = append(allTests,
		testLazyLocalCacheExportToNewDir,
		testLazyLocalCacheExportToNewDirCorrupt,
	)
}

// Importing DIR lazily and exporting to DIR-new (the rotation that keeps a
// cache directory bounded): the layers no step mounted are taken from DIR by
// the client, not read and written back by the daemon, and DIR-new is a
// complete cache that a fresh daemon finds fully cached.
func testLazyLocalCacheExportToNewDir(t *testing.T, sb integration.Sandbox) {
	s := newScenario(t, sb)
	s.seed(t, s.built, nil)
	dir2 := filepath.Join(t.TempDir(), "cache-new")
	_, err := s.c.Solve(sb.Context(), marshal(t, sb, s.built), SolveOpt{
		CacheImports: []CacheOptionsEntry{{Type: "local", Attrs: map[string]string{"src": s.dir, "lazy": "true"}}},
		CacheExports: []CacheOptionsEntry{{Type: "local", Attrs: map[string]string{"dest": dir2, "mode": "max"}}},
	}, nil)
	require.NoError(t, err)

	m := cachetest.RequireComplete(t, dir2)
	require.Equal(t, s.mfst.Layers, m.Layers)
	for _, l := range m.Layers {
		src, err := os.Stat(cachetest.BlobPath(s.dir, l.Digest))
		require.NoError(t, err)
		dst, err := os.Stat(cachetest.BlobPath(dir2, l.Digest))
		require.NoError(t, err)
		require.True(t, os.SameFile(src, dst), "layer %s was linked from the imported directory, not written by the daemon", l.Digest)
	}

	ensurePruneAll(t, s.c, sb)
	desc, _ := cachetest.Manifest(t, dir2)
	p, err := buildWithImport(sb.Context(), t, s.c, marshal(t, sb, s.built), importOpts{dir: dir2, digest: desc.Digest, lazy: true, store: cachetest.NewCountingStore(t, dir2)})
	require.NoError(t, err)
	require.Empty(t, p.Uncached(), "a fresh daemon importing the new directory is fully cached")
}

// A corrupt blob in DIR does not become a corrupt blob in DIR-new: the
// client does not take it, and the daemon's copy fails as corrupt.
func testLazyLocalCacheExportToNewDirCorrupt(t *testing.T, sb integration.Sandbox) {
	s := newScenario(t, sb)
	s.seed(t, s.built, nil)
	victim := s.mfst.Layers[len(s.mfst.Layers)-1].Digest
	path := cachetest.BlobPath(s.dir, victim)
	dt, err := os.ReadFile(path)
	require.NoError(t, err)
	bad := slices.Clone(dt)
	bad[len(bad)/2] ^= 0xff
	require.NoError(t, os.Chmod(path, 0o644))
	require.NoError(t, os.WriteFile(path, bad, 0o644))

	dir2 := filepath.Join(t.TempDir(), "cache-new")
	_, err = s.c.Solve(sb.Context(), marshal(t, sb, s.built), SolveOpt{
		CacheImports: []CacheOptionsEntry{{Type: "local", Attrs: map[string]string{"src": s.dir, "lazy": "true"}}},
		CacheExports: []CacheOptionsEntry{{Type: "local", Attrs: map[string]string{"dest": dir2, "mode": "max"}}},
	}, nil)
	require.ErrorContains(t, err, "blob "+victim.String()+" is corrupt")
	if got, err := os.ReadFile(cachetest.BlobPath(dir2, victim)); err == nil {
		require.Equal(t, victim, digest.FromBytes(got), "no corrupt blob in the new directory")
	}
}
