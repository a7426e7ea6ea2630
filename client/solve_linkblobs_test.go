package client

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	contentlocal "github.com/containerd/containerd/v2/plugins/content/local"
	cerrdefs "github.com/containerd/errdefs"
	"github.com/gofrs/flock"
	digest "github.com/opencontainers/go-digest"
	ocispecs "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/stretchr/testify/require"
)

// newTestLinker is the linker of a solve importing imported (content store
// cs) lazily and exporting to dest; it is stopped when the test ends.
func newTestLinker(t *testing.T, imported string, cs content.Store, dest string) *blobLinker {
	l := newBlobLinker(t.Context(), []string{imported}, map[string]string{dest: "latest"}, map[string]content.Store{"local:" + imported: cs})
	t.Cleanup(l.stop)
	return l
}

// waitChecked waits for the check of the blob file at path to end and
// returns its outcome.
func waitChecked(t *testing.T, l *blobLinker, path string) error {
	t.Helper()
	var c *blobCheck
	require.Eventually(t, func() bool {
		l.mu.Lock()
		defer l.mu.Unlock()
		c = l.checks[path]
		return c != nil
	}, 10*time.Second, 5*time.Millisecond, "%s is checked before the export asks for it", path)
	<-c.done
	return c.err
}

func TestLazyImportBlobsLinkedIntoExport(t *testing.T) {
	ctx := t.Context()
	layer := []byte("layer held by the imported directory")
	imported, importedStore, _ := setupCacheStore(ctx, t, []byte(`{}`), [][]byte{layer}, "latest")
	desc := ocispecs.Descriptor{Digest: digest.FromBytes(layer), Size: int64(len(layer))}
	dest := t.TempDir()
	destStore, err := contentlocal.NewStore(dest)
	require.NoError(t, err)

	l := newTestLinker(t, imported, importedStore, dest)
	require.NoError(t, waitChecked(t, l, blobPath(imported, desc.Digest)))

	export := &cacheExportStore{Store: l.exportStore(destStore, dest), lock: flock.New(filepath.Join(dest, "cache.lock"))}
	defer export.Close()
	_, err = content.OpenWriter(ctx, export, content.WithRef("layer"), content.WithDescriptor(desc))
	require.True(t, cerrdefs.IsAlreadyExists(err), "the daemon is told to skip the blob: %v", err)
	require.True(t, export.lock.RLocked(), "the export holds its lock from its first write attempt")

	got, err := content.ReadBlob(ctx, destStore, desc)
	require.NoError(t, err)
	require.Equal(t, layer, got)
	src, err := os.Stat(blobPath(imported, desc.Digest))
	require.NoError(t, err)
	dst, err := os.Stat(blobPath(dest, desc.Digest))
	require.NoError(t, err)
	require.True(t, os.SameFile(src, dst), "hard-linked, not copied")
}

// A blob whose content does not match its digest is not taken; nor is one
// the imported directory does not hold. The daemon writes those itself.
func TestLazyImportBlobsNotLinked(t *testing.T) {
	ctx := t.Context()
	good := []byte("the real content of the layer")
	bad := []byte("the real content of the LAYER")
	imported, importedStore, _ := setupCacheStore(ctx, t, []byte(`{}`), [][]byte{good}, "latest")
	desc := ocispecs.Descriptor{Digest: digest.FromBytes(good), Size: int64(len(good))}
	require.NoError(t, os.Chmod(blobPath(imported, desc.Digest), 0o644))
	require.NoError(t, os.WriteFile(blobPath(imported, desc.Digest), bad, 0o644))

	dest := t.TempDir()
	destStore, err := contentlocal.NewStore(dest)
	require.NoError(t, err)
	l := newTestLinker(t, imported, importedStore, dest)
	require.ErrorContains(t, waitChecked(t, l, blobPath(imported, desc.Digest)), "does not match its digest")
	store := l.exportStore(destStore, dest)

	for _, d := range []ocispecs.Descriptor{desc, {Digest: digest.FromString("not imported"), Size: 12}} {
		w, err := content.OpenWriter(ctx, store, content.WithRef(d.Digest.String()), content.WithDescriptor(d))
		require.NoError(t, err, "the daemon writes %s itself", d.Digest)
		require.NoError(t, w.Close())
		require.NoFileExists(t, blobPath(dest, d.Digest))
	}
	require.NoError(t, content.WriteBlob(ctx, store, "good", bytes.NewReader(good), desc))
	got, err := content.ReadBlob(ctx, destStore, desc)
	require.NoError(t, err)
	require.Equal(t, good, got)
}

// A blob file replaced after it was checked is checked again when linked:
// a corrupt replacement is not taken, an intact one is.
func TestLazyImportBlobsReplacedAfterCheck(t *testing.T) {
	ctx := t.Context()
	good := []byte("the real content of the layer")
	bad := []byte("the real content of the LAYER")
	desc := ocispecs.Descriptor{Digest: digest.FromBytes(good), Size: int64(len(good))}

	for _, tc := range []struct {
		name        string
		replacement []byte
		taken       bool
	}{
		{name: "corrupt", replacement: bad, taken: false},
		{name: "intact", replacement: good, taken: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			imported, importedStore, _ := setupCacheStore(ctx, t, []byte(`{}`), [][]byte{good}, "latest")
			dest := t.TempDir()
			destStore, err := contentlocal.NewStore(dest)
			require.NoError(t, err)
			l := newTestLinker(t, imported, importedStore, dest)
			src := blobPath(imported, desc.Digest)
			require.NoError(t, waitChecked(t, l, src))

			// A new file in its place, as a rewrite of the directory
			// leaves it.
			require.NoError(t, os.WriteFile(src+".new", tc.replacement, 0o444))
			require.NoError(t, os.Rename(src+".new", src))

			_, err = content.OpenWriter(ctx, l.exportStore(destStore, dest), content.WithRef("layer"), content.WithDescriptor(desc))
			if !tc.taken {
				require.NoError(t, err, "the daemon writes the blob itself")
				require.NoFileExists(t, blobPath(dest, desc.Digest))
				return
			}
			require.True(t, cerrdefs.IsAlreadyExists(err), "%v", err)
			got, err := os.ReadFile(blobPath(dest, desc.Digest))
			require.NoError(t, err)
			require.Equal(t, good, got)
		})
	}
}

// A directory imported and exported by the same solve takes nothing from
// itself, and nothing is checked in the background for it.
func TestLazyImportBlobsSameDirectory(t *testing.T) {
	imported, cs, _ := setupCacheStore(t.Context(), t, []byte(`{}`), [][]byte{[]byte("layer")}, "latest")
	l := newTestLinker(t, imported, cs, imported+"/")
	require.Nil(t, l.cancel, "no background check")
	require.Equal(t, cs, l.exportStore(cs, imported))
}

// A check canceled with its solve leaves no outcome behind: the next caller
// checks again.
func TestLazyImportBlobsCheckCanceled(t *testing.T) {
	layer := []byte("layer")
	imported, _, _ := setupCacheStore(t.Context(), t, []byte(`{}`), [][]byte{layer}, "latest")
	dgst := digest.FromBytes(layer)
	l := &blobLinker{checks: map[string]*blobCheck{}}
	canceled, cancel := context.WithCancel(t.Context())
	cancel()
	_, err := l.check(canceled, blobPath(imported, dgst), dgst, int64(len(layer)))
	require.ErrorIs(t, err, context.Canceled)
	require.Empty(t, l.checks)
	fi, err := l.check(t.Context(), blobPath(imported, dgst), dgst, int64(len(layer)))
	require.NoError(t, err)
	require.Equal(t, int64(len(layer)), fi.Size())
}
