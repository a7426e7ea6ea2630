package lazytest

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/moby/buildkit/client"
	"github.com/moby/buildkit/util/testutil/integration"
	"github.com/stretchr/testify/require"
)

func init() {
	tests = append(tests, testLazyExportLinksImportedBlobs)
}

// The rotation with a lazy import (series 06 on 03; 06's own tests import
// eagerly, as it goes on upstream alone): the export to a new directory is
// complete and its layers are hard links of the imported ones, which the
// daemon, importing lazily, never read.
func testLazyExportLinksImportedBlobs(t *testing.T, sb integration.Sandbox) {
	s := newScenario(t, sb)
	s.seed(t, s.built, nil)

	dir2 := filepath.Join(t.TempDir(), "cache-new")
	_, err := s.c.Solve(sb.Context(), marshal(t, sb, s.built), client.SolveOpt{
		CacheImports: s.lazyImport(),
		CacheExports: []client.CacheOptionsEntry{{Type: "local", Attrs: map[string]string{"dest": dir2, "mode": "max"}}},
	}, nil)
	require.NoError(t, err)
	m := requireComplete(t, dir2)
	require.Equal(t, s.mfst.Layers, m.Layers)
	for _, l := range m.Layers {
		a, err := os.Stat(blobPath(s.dir, l.Digest))
		require.NoError(t, err)
		b, err := os.Stat(blobPath(dir2, l.Digest))
		require.NoError(t, err)
		require.True(t, os.SameFile(a, b), "layer %s of the new directory is not a link of the imported one", l.Digest)
	}
}
