package local

import (
	"context"
	"io"
	"sync"

	"github.com/containerd/containerd/v2/core/content"
	ocispecs "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/pkg/errors"
)

// sessionReaderAt reads one blob through a session that serves the cache
// directory. If that session closes mid-read it reopens the blob through
// another one, so a client going away between Info and ReadAt surfaces as
// our error, not as gRPC's "the client connection is closing".
type sessionReaderAt struct {
	p    *cacheProvider
	ctx  context.Context
	desc ocispecs.Descriptor

	// mu guards the session in use, which a failed read replaces.
	mu    sync.Mutex
	ra    content.ReaderAt
	id    string
	tried map[string]struct{}
}

var _ content.ReaderAt = &sessionReaderAt{}

// open moves to the next session that serves the blob; r.mu is held, or r
// not shared yet.
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
		r.mu.Lock()
		ra, id := r.ra, r.id
		r.mu.Unlock()
		n, err := ra.ReadAt(b, off)
		if err == nil || errors.Is(err, io.EOF) || r.ctx.Err() != nil {
			return n, err
		}
		// The session failed under us; retry the whole read elsewhere,
		// unless a concurrent read has moved on already.
		r.mu.Lock()
		var oerr error
		if r.ra == ra {
			oerr = r.open()
		}
		r.mu.Unlock()
		if oerr != nil {
			return 0, errors.Wrapf(oerr, "reading through session %s failed: %v", id, err)
		}
	}
}

// verify reads the whole blob and checks its size and digest before any of
// it is handed out. The daemon's fetch keeps a partial ingest per digest and
// resumes it, or commits it as is once it has every byte: a corrupt byte
// that reached it would fail every later fetch of that digest on this
// daemon, even after the directory is repaired. So nothing is served until
// the blob is known good.
func (r *sessionReaderAt) verify() error {
	if err := r.desc.Digest.Validate(); err != nil {
		return errors.Wrapf(err, "local cache %s: invalid digest for blob %s", r.p.src, r.desc.Digest)
	}
	if size := r.ra.Size(); size != r.desc.Size {
		return errors.Errorf("local cache %s: blob %s has %d bytes, its descriptor says %d: the file is damaged; delete the cache directory or export the cache again", r.p.src, r.desc.Digest, size, r.desc.Size)
	}
	dgstr := r.desc.Digest.Algorithm().Digester()
	if _, err := io.Copy(dgstr.Hash(), io.NewSectionReader(r, 0, r.desc.Size)); err != nil {
		return err
	}
	if got := dgstr.Digest(); got != r.desc.Digest {
		return errors.Errorf("local cache %s: blob %s is corrupt: its content has digest %s; delete the cache directory or export the cache again", r.p.src, r.desc.Digest, got)
	}
	return nil
}

func (r *sessionReaderAt) Size() int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.ra.Size()
}

func (r *sessionReaderAt) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.ra.Close()
}
