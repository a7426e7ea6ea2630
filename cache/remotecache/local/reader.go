package local

import (
	"context"
	"io"
	"sync"

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
// For a lazy import it also checks the blob's digest as it streams, and
// withholds the last bytes of a blob that does not match (see verify).
type sessionReaderAt struct {
	p    *cacheProvider
	ctx  context.Context
	desc ocispecs.Descriptor

	// mu guards the session in use, which a failed read replaces.
	mu    sync.Mutex
	ra    content.ReaderAt
	id    string
	tried map[string]struct{}

	// vmu serializes verified reads; digester hashes what was read
	// contiguously from offset 0 up to next. nil: not verifying.
	vmu      sync.Mutex
	digester digest.Digester
	next     int64
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
	if r.digester == nil {
		return r.readAt(b, off)
	}
	r.vmu.Lock()
	defer r.vmu.Unlock()
	if off != r.next {
		if r.next != 0 || off > r.desc.Size {
			// Random access: leave the digest to the content store.
			r.digester = nil
			return r.readAt(b, off)
		}
		// A resumed fetch: the daemon holds the first off bytes from an
		// earlier attempt. Hash them from the source so the check still
		// covers the whole blob.
		if _, err := io.Copy(r.digester.Hash(), io.NewSectionReader(readerAtFunc(r.readAt), 0, off)); err != nil {
			return 0, err
		}
		r.next = off
	}
	n, err := r.readAt(b, off)
	if verr := r.verify(b[:n], err); verr != nil {
		return 0, verr
	}
	return n, err
}

// verify hashes the next contiguous read b. Before the last bytes of the
// blob go out it compares the digest: a mismatch is returned instead of
// those bytes, and the daemon's partial ingest of the blob is aborted. The
// daemon's fetch resumes an ingest left by a failed attempt, or commits it
// once it holds every byte: corrupt bytes left there would fail every later
// fetch of that digest, even after the directory is repaired.
func (r *sessionReaderAt) verify(b []byte, readErr error) error {
	r.digester.Hash().Write(b)
	r.next += int64(len(b))
	var err error
	switch {
	case r.next > r.desc.Size:
		err = errors.Errorf("local cache %s: blob %s is larger than the %d bytes its descriptor says; delete the cache directory or export the cache again", r.p.src, r.desc.Digest, r.desc.Size)
	case r.next == r.desc.Size:
		if got := r.digester.Digest(); got != r.desc.Digest {
			err = errors.Errorf("local cache %s: blob %s is corrupt: its content has digest %s; delete the cache directory or export the cache again", r.p.src, r.desc.Digest, got)
		}
	case errors.Is(readErr, io.EOF):
		err = errors.Errorf("local cache %s: blob %s is truncated: %d of %d bytes; delete the cache directory or export the cache again", r.p.src, r.desc.Digest, r.next, r.desc.Size)
	}
	if err != nil {
		r.digester = nil
		r.p.abortIngests(context.WithoutCancel(r.ctx), r.desc.Digest)
	}
	return err
}

// readAt reads through the current session, moving to the next one when it
// fails.
func (r *sessionReaderAt) readAt(b []byte, off int64) (int, error) {
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

// Size is the descriptor's size when known: a file shorter than that then
// reads as truncated instead of passing for a shorter blob.
func (r *sessionReaderAt) Size() int64 {
	if r.desc.Size > 0 {
		return r.desc.Size
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.ra.Size()
}

func (r *sessionReaderAt) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.ra.Close()
}

type readerAtFunc func([]byte, int64) (int, error)

func (f readerAtFunc) ReadAt(b []byte, off int64) (int, error) { return f(b, off) }
