package lazytest

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/moby/buildkit/client"
	"github.com/moby/buildkit/util/testutil/integration"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

func init() {
	tests = append(tests, testLazyReadOnlyDir)
}

// A read-only cache directory (mounted :ro in some CI setups) is imported
// lazily: the client opens its blobs read-only and writes nothing there.
// The suite runs as root (the runc worker needs it), so the read-only bind
// mount is always possible.
func testLazyReadOnlyDir(t *testing.T, sb integration.Sandbox) {
	require.Equal(t, 0, os.Getuid(), "a read-only bind mount needs root: run the suite as root")
	s := newScenario(t, sb)
	s.seed(t, s.built, nil)
	require.NoError(t, os.Remove(filepath.Join(s.dir, "cache.lock")))
	ro := filepath.Join(t.TempDir(), "ro")
	require.NoError(t, os.Mkdir(ro, 0o755))
	require.NoError(t, unix.Mount(s.dir, ro, "", unix.MS_BIND, ""))
	t.Cleanup(func() { _ = unix.Unmount(ro, unix.MNT_DETACH) })
	require.NoError(t, unix.Mount("", ro, "", unix.MS_REMOUNT|unix.MS_BIND|unix.MS_RDONLY, ""))
	require.ErrorIs(t, os.WriteFile(filepath.Join(ro, "probe"), nil, 0o644), unix.EROFS)

	out := t.TempDir()
	ch, p, wait := watch()
	_, err := s.c.Solve(sb.Context(), marshal(t, sb, s.copySum()), client.SolveOpt{
		CacheImports: []client.CacheOptionsEntry{{Type: "local", Attrs: map[string]string{"src": ro, "lazy": "true"}}},
		Exports:      []client.ExportEntry{{Type: client.ExporterLocal, OutputDir: out}},
	}, ch)
	require.NoError(t, err)
	wait()
	require.Empty(t, p.importErrors())
	require.True(t, p.cached(t, "checksum data"), "the step came from the imported cache")
	got, err := os.ReadFile(filepath.Join(out, "out-sum"))
	require.NoError(t, err)
	require.Equal(t, s.wantSum(), string(got), "the RUN read the lazily imported layers")
	require.NoFileExists(t, filepath.Join(s.dir, "cache.lock"))
}
