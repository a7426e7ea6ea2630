package client

import (
	"context"
	"io"
	"os"
	"path/filepath"

	"github.com/containerd/containerd/v2/core/content"
	ocispecs "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/pkg/errors"
)

// localImports returns the content stores of the local directories the
// solve imports, by directory.
func (opt *cacheOptions) localImports() map[string]content.Store {
	imported := make(map[string]content.Store)
	for _, im := range opt.options.Imports {
		if im.Type == "local" {
			imported[im.Attrs["src"]] = opt.contentStores["local:"+im.Attrs["src"]]
		}
	}
	return imported
}

// placeImported puts the blob desc into the export directory, when it lacks
// it and a directory the solve imports holds it: a hard link where the file
// system allows, a copy from the import's store otherwise (another file
// system, or a pinned blob its directory has lost). Either is hashed before
// it lands; a blob that does not match desc is left for the daemon to write.
func (s *cacheExportStore) placeImported(ctx context.Context, desc ocispecs.Descriptor) error {
	if _, err := s.Store.Info(ctx, desc.Digest); err == nil || desc.Digest.Validate() != nil {
		return nil
	}
	rel := filepath.Join("blobs", desc.Digest.Algorithm().String(), desc.Digest.Encoded())
	for dir, cs := range s.imports {
		if _, err := cs.Info(ctx, desc.Digest); err != nil {
			continue
		}
		if linkBlob(filepath.Join(dir, rel), s.dir, rel, desc) == nil {
			return nil
		}
		ra, err := cs.ReaderAt(ctx, desc)
		if err != nil {
			return err
		}
		defer ra.Close()
		ref := "import-" + desc.Digest.String()
		if err := content.WriteBlob(ctx, s.Store, ref, content.NewReader(ra), desc); err != nil {
			s.Store.Abort(context.WithoutCancel(ctx), ref)
			return errors.Wrapf(err, "failed to copy blob %s from local cache %s", desc.Digest, dir)
		}
		return nil
	}
	return nil
}

// linkBlob hard-links src to rel in the directory root once the link hashes
// to desc. src must be a regular file: a symbolic link would be linked as
// itself and resolve from its new place to another file than the one hashed.
func linkBlob(src, root, rel string, desc ocispecs.Descriptor) error {
	fi, err := os.Lstat(src)
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return errors.Errorf("%s is not a regular file", src)
	}
	// In the store's ingest directory, beside its own unfinished writes:
	// what a crash leaves there is not in the export's root.
	ingest := filepath.Join(root, "ingest")
	if err := os.MkdirAll(ingest, 0o755); err != nil {
		return err
	}
	tmp, err := os.MkdirTemp(ingest, ".import-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	p := filepath.Join(tmp, "blob")
	if err := os.Link(src, p); err != nil {
		return err
	}
	// src may have been replaced since it was looked at: what is hashed and
	// placed is the file looked at.
	f, err := os.OpenFile(p, os.O_RDONLY|oNoFollow, 0)
	if err != nil {
		return err
	}
	ffi, err := f.Stat()
	if err != nil {
		f.Close()
		return err
	}
	if !os.SameFile(fi, ffi) {
		f.Close()
		return errors.Errorf("%s changed while it was linked", src)
	}
	d := desc.Digest.Algorithm().Digester()
	n, err := io.Copy(d.Hash(), f)
	f.Close()
	if err != nil {
		return err
	}
	if n != desc.Size || d.Digest() != desc.Digest {
		return errors.Errorf("%s holds %d bytes of digest %s, not %s", src, n, d.Digest(), desc.Digest)
	}
	if err := os.MkdirAll(filepath.Join(root, filepath.Dir(rel)), 0o755); err != nil {
		return err
	}
	return os.Rename(p, filepath.Join(root, rel))
}
