//go:build linux

package client

import (
	"path/filepath"
	"testing"

	"github.com/moby/buildkit/util/testutil/integration"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

func init() {
	allTests = append(allTests, testLocalCacheExportToOtherFileSystem)
}

// testLocalCacheExportToOtherFileSystem checks that an export to a new
// directory on another file system than the imported one, where no hard
// link can be made, copies the imported blobs on the client: the export is
// complete and no layer is sent by the daemon.
func testLocalCacheExportToOtherFileSystem(t *testing.T, sb integration.Sandbox) {
	lc := newLinkedCache(t, sb)
	mnt := t.TempDir()
	if err := unix.Mount("tmpfs", mnt, "tmpfs", 0, "size=64m"); err != nil {
		t.Skipf("mounting a tmpfs needs CAP_SYS_ADMIN: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(mnt, unix.MNT_DETACH) })
	var src, dst unix.Stat_t
	require.NoError(t, unix.Stat(lc.dir, &src))
	require.NoError(t, unix.Stat(mnt, &dst))
	require.NotEqual(t, src.Dev, dst.Dev)

	c, b := newCountingClient(t, sb)
	defer ensurePruneAll(t, c, sb)
	dest := filepath.Join(mnt, "cache-new")
	_, err := c.Solve(sb.Context(), lc.def, lc.rotate(dest), nil)
	require.NoError(t, err)
	require.Equal(t, lc.layers, requireCompleteCache(t, dest))
	t.Logf("session: %d bytes sent, %d received", b.sent.Load(), b.received.Load())
	require.Less(t, b.received.Load(), int64(linkedLayerSize), "the daemon sent a layer")
}
