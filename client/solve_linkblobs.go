package client

import (
	"context"
	"io"
	"os"
	"path/filepath"

	"github.com/containerd/containerd/v2/core/content"
	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/buildkit/identity"
	"github.com/moby/buildkit/util/bklog"
	digest "github.com/opencontainers/go-digest"
	"github.com/pkg/errors"
)

// linkingStore is the content store of a local cache export directory that
// takes a blob from a directory the same solve imports lazily, instead of
// receiving it from the daemon.
//
// A layer imported lazily and never pulled is exported by the daemon
// reading it from the imported directory through the session and writing
// it back through the session: every byte crosses twice, though the client
// holds it already (the local analogue of a registry's cross-repository
// mount is missing). When the daemon opens a writer for a blob that an
// imported directory holds, the blob is hard-linked (or copied, across file
// systems) into the export directory after its digest is checked, and the
// writer is refused as already existing, which makes the daemon skip it. A
// blob whose content does not match its digest is not taken: the daemon's
// own copy then fails as a corrupt blob, instead of the export spreading it.
type linkingStore struct {
	content.Store
	dir  string
	from []string
}

// withLazyImportBlobs returns cs, the store of the export directory dir, taking
// blobs from the directories in from (those imported lazily by the solve).
func withLazyImportBlobs(cs content.Store, dir string, from []string) content.Store {
	var others []string
	for _, d := range from {
		if filepath.Clean(d) != filepath.Clean(dir) {
			others = append(others, d)
		}
	}
	if len(others) == 0 {
		return cs
	}
	return &linkingStore{Store: cs, dir: dir, from: others}
}

func (s *linkingStore) Writer(ctx context.Context, opts ...content.WriterOpt) (content.Writer, error) {
	var wOpts content.WriterOpts
	for _, o := range opts {
		if err := o(&wOpts); err != nil {
			return nil, err
		}
	}
	dgst := wOpts.Desc.Digest
	if dgst.Validate() == nil && wOpts.Desc.Size > 0 {
		if _, err := s.Store.Info(ctx, dgst); err != nil && cerrdefs.IsNotFound(err) {
			for _, d := range s.from {
				ok, err := linkBlob(blobPath(d, dgst), blobPath(s.dir, dgst), dgst, wOpts.Desc.Size)
				if err != nil {
					bklog.G(ctx).WithError(err).Debugf("not taking blob %s from %s", dgst, d)
					continue
				}
				if ok {
					return nil, errors.Wrapf(cerrdefs.ErrAlreadyExists, "content %s taken from %s", dgst, d)
				}
			}
		}
	}
	return s.Store.Writer(ctx, opts...)
}

func blobPath(dir string, dgst digest.Digest) string {
	return filepath.Join(dir, "blobs", dgst.Algorithm().String(), dgst.Encoded())
}

// linkBlob puts the blob src at dst when src has the given digest and size:
// a hard link when both are on one file system, a copy otherwise. The file
// is checked after it is linked, so the check covers what dst holds. It
// reports false when src is not there.
func linkBlob(src, dst string, dgst digest.Digest, size int64) (bool, error) {
	if _, err := os.Stat(src); err != nil {
		if os.IsNotExist(err) {
			return false, nil
		}
		return false, err
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return false, err
	}
	tmp := filepath.Join(filepath.Dir(dst), ".link-"+identity.NewID())
	defer os.Remove(tmp)
	if err := os.Link(src, tmp); err != nil {
		if err := copyFile(src, tmp); err != nil {
			return false, err
		}
	}
	f, err := os.Open(tmp)
	if err != nil {
		return false, err
	}
	defer f.Close()
	verifier := dgst.Verifier()
	n, err := io.Copy(verifier, f)
	if err != nil {
		return false, err
	}
	if n != size || !verifier.Verified() {
		return false, errors.Errorf("blob %s in %s does not match its digest", dgst, filepath.Dir(filepath.Dir(filepath.Dir(src))))
	}
	return true, os.Rename(tmp, dst)
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o444)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
