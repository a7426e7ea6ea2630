package local

import (
	"context"
	"io"

	"github.com/containerd/containerd/v2/core/content"
	digest "github.com/opencontainers/go-digest"
	ocispecs "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/pkg/errors"
)

// sessionReaderAt reads one blob through a session that serves the cache
// directory. If that session closes mid-read it reopens the blob through
// another one, so a client going away between Info and ReadAt surfaces as
// our error, not as gRPC's "the client connection is closing".
//
// It also checks the digest of sequential reads from offset 0: a file
// corrupted in the directory fails with an error naming the directory,
// instead of a commit error deep inside the daemon's content store.
type sessionReaderAt struct {
	p    *cacheProvider
	ctx  context.Context
	desc ocispecs.Descriptor

	ra    content.ReaderAt
	id    string
	tried map[string]struct{}

	digester digest.Digester
	// hashed is how far reads have been contiguous from offset 0; -1 once
	// they were not, which turns verification off for this reader.
	hashed int64
}

var _ content.ReaderAt = &sessionReaderAt{}

func (r *sessionReaderAt) open() error {
	return r.p.each(r.ctx, r.desc.Digest, r.tried, func(id string, cs content.Store) error {
		r.tried[id] = struct{}{}
		ra, err := cs.ReaderAt(r.ctx, r.desc)
		if err != nil {
			return err
		}
		if r.ra != nil {
			r.ra.Close()
		}
		r.ra, r.id = ra, id
		return nil
	})
}

func (r *sessionReaderAt) ReadAt(b []byte, off int64) (int, error) {
	for {
		n, err := r.ra.ReadAt(b, off)
		if err != nil && !errors.Is(err, io.EOF) && r.ctx.Err() == nil {
			// The session failed under us; retry the whole read elsewhere.
			if oerr := r.open(); oerr != nil {
				return 0, errors.Wrapf(oerr, "reading through session %s failed: %v", r.id, err)
			}
			continue
		}
		if verr := r.verify(b[:n], off, err); verr != nil {
			return n, verr
		}
		return n, err
	}
}

func (r *sessionReaderAt) verify(b []byte, off int64, readErr error) error {
	if r.digester == nil || r.hashed < 0 {
		return nil
	}
	if off != r.hashed {
		r.hashed = -1
		return nil
	}
	r.digester.Hash().Write(b)
	r.hashed += int64(len(b))
	switch {
	case r.hashed > r.desc.Size:
		return errors.Errorf("local cache %s: blob %s is larger than the %d bytes its descriptor says; delete the cache directory or export the cache again", r.p.src, r.desc.Digest, r.desc.Size)
	case r.hashed == r.desc.Size:
		if got := r.digester.Digest(); got != r.desc.Digest {
			return errors.Errorf("local cache %s: blob %s is corrupt: its content has digest %s; delete the cache directory or export the cache again", r.p.src, r.desc.Digest, got)
		}
	case errors.Is(readErr, io.EOF) && r.hashed < r.desc.Size:
		return errors.Errorf("local cache %s: blob %s is truncated: %d of %d bytes; delete the cache directory or export the cache again", r.p.src, r.desc.Digest, r.hashed, r.desc.Size)
	}
	return nil
}

// Size is the descriptor's size: a blob whose file is shorter then fails
// as truncated when read.
func (r *sessionReaderAt) Size() int64 {
	if r.desc.Size > 0 {
		return r.desc.Size
	}
	return r.ra.Size()
}

func (r *sessionReaderAt) Close() error {
	return r.ra.Close()
}
