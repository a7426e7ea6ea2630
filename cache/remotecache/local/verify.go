package local

import (
	"fmt"
	"io"
	"sync"

	"github.com/containerd/containerd/v2/core/content"
	digest "github.com/opencontainers/go-digest"
	ocispecs "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/pkg/errors"
)

// verifiedReaderAt checks a blob's digest while the daemon reads it front to
// back, and fails the read that would hand out the last bytes of a blob that
// does not match.
//
// The daemon's fetch commits a blob once it holds every byte, and resumes a
// partial one on the next attempt: corrupt bytes must neither complete nor
// stay behind. onCorrupt runs before the error is returned, while the
// daemon's writer for the blob is still open, so that the caller can drop
// the partial copy.
type verifiedReaderAt struct {
	content.ReaderAt
	desc ocispecs.Descriptor
	// name says where the blob comes from, for errors.
	name      string
	onCorrupt func()

	mu sync.Mutex
	// digester hashes what was read contiguously from offset 0 up to next;
	// nil once verification is off.
	digester digest.Digester
	next     int64
}

// newVerifiedReaderAt verifies reads of ra against desc. Without a usable
// digest and size there is nothing to check against: ra is returned as is.
func newVerifiedReaderAt(ra content.ReaderAt, desc ocispecs.Descriptor, name string, onCorrupt func()) content.ReaderAt {
	if desc.Size <= 0 || desc.Digest.Validate() != nil {
		return ra
	}
	return &verifiedReaderAt{
		ReaderAt:  ra,
		desc:      desc,
		name:      name,
		onCorrupt: onCorrupt,
		digester:  desc.Digest.Algorithm().Digester(),
	}
}

func (r *verifiedReaderAt) ReadAt(b []byte, off int64) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.digester == nil {
		return r.ReaderAt.ReadAt(b, off)
	}
	if off != r.next {
		if r.next != 0 || off > r.desc.Size {
			// Random access: the content store checks the digest at
			// commit, as for any other provider.
			r.digester = nil
			return r.ReaderAt.ReadAt(b, off)
		}
		// A resumed fetch: the daemon holds the first off bytes from an
		// earlier attempt. Hash them from the source so that the check
		// still covers the whole blob.
		if _, err := io.Copy(r.digester.Hash(), io.NewSectionReader(r.ReaderAt, 0, off)); err != nil {
			return 0, err
		}
		r.next = off
	}
	n, err := r.ReaderAt.ReadAt(b, off)
	if verr := r.check(b[:n], err); verr != nil {
		return 0, verr
	}
	return n, err
}

// check hashes the next contiguous read b and, once the blob is complete,
// compares its digest.
func (r *verifiedReaderAt) check(b []byte, readErr error) error {
	r.digester.Hash().Write(b)
	r.next += int64(len(b))
	var problem string
	switch {
	case r.next > r.desc.Size:
		problem = fmt.Sprintf("is larger than the %d bytes its descriptor says", r.desc.Size)
	case r.next == r.desc.Size:
		if got := r.digester.Digest(); got != r.desc.Digest {
			problem = "is corrupt: its content has digest " + got.String()
		}
	case errors.Is(readErr, io.EOF):
		problem = fmt.Sprintf("is truncated: %d of %d bytes", r.next, r.desc.Size)
	}
	if problem == "" {
		return nil
	}
	r.digester = nil
	if r.onCorrupt != nil {
		r.onCorrupt()
	}
	return errors.Errorf("%s: blob %s %s; delete the cache directory or export the cache again", r.name, r.desc.Digest, problem)
}
