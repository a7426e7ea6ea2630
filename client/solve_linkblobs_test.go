package client

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	contentlocal "github.com/containerd/containerd/v2/plugins/content/local"
	cerrdefs "github.com/containerd/errdefs"
	"github.com/gofrs/flock"
	digest "github.com/opencontainers/go-digest"
	ocispecs "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/stretchr/testify/require"
)

func TestLazyImportBlobsLinkedIntoExport(t *testing.T) {
	ctx := t.Context()
	imported, _, _ := setupCacheStore(ctx, t, []byte(`{}`), [][]byte{[]byte("layer held by the imported directory")}, "latest")
	layer := []byte("layer held by the imported directory")
	desc := ocispecs.Descriptor{Digest: digest.FromBytes(layer), Size: int64(len(layer))}
	dest := t.TempDir()
	destStore, err := contentlocal.NewStore(dest)
	require.NoError(t, err)

	export := &cacheExportStore{Store: withLazyImportBlobs(destStore, dest, []string{imported}), lock: flock.New(filepath.Join(dest, "cache.lock"))}
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
	imported, _, _ := setupCacheStore(ctx, t, []byte(`{}`), [][]byte{good}, "latest")
	desc := ocispecs.Descriptor{Digest: digest.FromBytes(good), Size: int64(len(good))}
	require.NoError(t, os.Chmod(blobPath(imported, desc.Digest), 0o644))
	require.NoError(t, os.WriteFile(blobPath(imported, desc.Digest), bad, 0o644))

	dest := t.TempDir()
	destStore, err := contentlocal.NewStore(dest)
	require.NoError(t, err)
	store := withLazyImportBlobs(destStore, dest, []string{imported})

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

// A directory imported and exported by the same solve takes nothing from
// itself.
func TestLazyImportBlobsSameDirectory(t *testing.T) {
	dir := t.TempDir()
	cs, err := contentlocal.NewStore(dir)
	require.NoError(t, err)
	require.Equal(t, cs, withLazyImportBlobs(cs, dir, []string{dir + "/"}))
}
