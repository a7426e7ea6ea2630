package client

import (
	"context"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	contentlocal "github.com/containerd/containerd/v2/plugins/content/local"
	cerrdefs "github.com/containerd/errdefs"
	"github.com/gofrs/flock"
	ocispecs "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/stretchr/testify/require"
)

// newLinkingExportStore returns an export store in a new directory, for a
// solve that imports a directory holding blob, and the blob's descriptor.
func newLinkingExportStore(t *testing.T, blob []byte) (*cacheExportStore, content.Store, ocispecs.Descriptor) {
	src := t.TempDir()
	srcStore, err := contentlocal.NewStore(src)
	require.NoError(t, err)
	dgst := writeBlob(t.Context(), t, srcStore, blob)
	dest := t.TempDir()
	destStore, err := contentlocal.NewStore(dest)
	require.NoError(t, err)
	s := &cacheExportStore{Store: destStore, lock: flock.New(filepath.Join(dest, "cache.lock")), dir: dest, imports: map[string]content.Store{src: srcStore}}
	t.Cleanup(func() { s.Close() })
	return s, destStore, ocispecs.Descriptor{Digest: dgst, Size: int64(len(blob))}
}

// An imported blob is placed once the export holds the directory's shared
// lock, as a blob the export writes: not while a reset holds it, and
// afterwards the writer for it is answered AlreadyExists.
func TestCacheExportStorePlacesImportedBlobUnderLock(t *testing.T) {
	ctx := t.Context()
	blob := []byte("imported layer")
	s, dest, desc := newLinkingExportStore(t, blob)

	reset := flock.New(s.lock.Path())
	locked, err := reset.TryLock()
	require.NoError(t, err)
	require.True(t, locked)
	lockCtx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	_, err = s.Writer(lockCtx, content.WithRef("export"), content.WithDescriptor(desc))
	require.ErrorContains(t, err, "failed to lock cache store for export")
	_, err = dest.Info(ctx, desc.Digest)
	require.ErrorIs(t, err, cerrdefs.ErrNotFound)
	require.NoError(t, reset.Unlock())

	_, err = s.Writer(ctx, content.WithRef("export"), content.WithDescriptor(desc))
	require.ErrorIs(t, err, cerrdefs.ErrAlreadyExists)
	require.True(t, s.lock.RLocked())
	dt, err := content.ReadBlob(ctx, dest, desc)
	require.NoError(t, err)
	require.Equal(t, blob, dt)
}

// An imported blob whose bytes do not match its digest is not placed: the
// writer is the store's, for the daemon to write the blob.
func TestCacheExportStoreSkipsMismatchedBlob(t *testing.T) {
	ctx := t.Context()
	s, dest, desc := newLinkingExportStore(t, []byte("imported layer"))
	for dir := range s.imports {
		p := filepath.Join(dir, "blobs", desc.Digest.Algorithm().String(), desc.Digest.Encoded())
		require.NoError(t, os.Chmod(p, 0o644))
		require.NoError(t, os.WriteFile(p, []byte("corrupt layer!"), 0o644))
	}

	w, err := s.Writer(ctx, content.WithRef("export"), content.WithDescriptor(desc))
	require.NoError(t, err)
	require.NoError(t, w.Close())
	_, err = dest.Info(ctx, desc.Digest)
	require.ErrorIs(t, err, cerrdefs.ErrNotFound)
	for _, dir := range []string{s.dir, filepath.Join(s.dir, "ingest")} {
		entries, err := os.ReadDir(dir)
		require.NoError(t, err)
		for _, e := range entries {
			require.NotContains(t, e.Name(), ".import-", "a temporary file is left in %s", dir)
		}
	}
}

// An imported blob that is a symbolic link, to an identical copy, is not
// linked: a link to it would be a second symbolic link, resolving from the
// export directory to another file than the one hashed, or out of it. The
// blob is copied, as a regular file.
func TestCacheExportStoreCopiesSymlinkedBlob(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("symbolic links need a privilege on Windows")
	}
	for _, tc := range []struct {
		name   string
		target func(base string) string
	}{
		// From DIR/blobs/sha256 this is DIR/copy; from the export's
		// temporary directory it is BASE/copy, which holds the same bytes;
		// from the export's blobs/sha256 it is the export's copy, which
		// does not exist.
		{name: "relative", target: func(string) string { return "../../copy" }},
		{name: "absolute", target: func(base string) string { return filepath.Join(base, "copy") }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := t.Context()
			blob := []byte("imported layer")
			base := t.TempDir()
			src := filepath.Join(base, "src")
			srcStore, err := contentlocal.NewStore(src)
			require.NoError(t, err)
			dgst := writeBlob(ctx, t, srcStore, blob)
			p := filepath.Join(src, "blobs", dgst.Algorithm().String(), dgst.Encoded())
			for _, copy := range []string{filepath.Join(src, "copy"), filepath.Join(base, "copy")} {
				require.NoError(t, os.WriteFile(copy, blob, 0o644))
			}
			require.NoError(t, os.Remove(p))
			require.NoError(t, os.Symlink(tc.target(base), p))
			dest := filepath.Join(base, "dest")
			destStore, err := contentlocal.NewStore(dest)
			require.NoError(t, err)
			s := &cacheExportStore{Store: destStore, lock: flock.New(filepath.Join(dest, "cache.lock")), dir: dest, imports: map[string]content.Store{src: srcStore}}
			defer s.Close()
			desc := ocispecs.Descriptor{Digest: dgst, Size: int64(len(blob))}

			_, err = s.Writer(ctx, content.WithRef("export"), content.WithDescriptor(desc))
			require.ErrorIs(t, err, cerrdefs.ErrAlreadyExists)
			fi, err := os.Lstat(filepath.Join(dest, "blobs", dgst.Algorithm().String(), dgst.Encoded()))
			require.NoError(t, err)
			require.True(t, fi.Mode().IsRegular(), "the placed blob is %s", fi.Mode())
			dt, err := content.ReadBlob(ctx, destStore, desc)
			require.NoError(t, err)
			require.Equal(t, blob, dt)
		})
	}
}
