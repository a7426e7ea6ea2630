package local

import (
	"io"
	"sync"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/pkg/errors"
)

const (
	// readAheadChunk is the size of one read over the session. The fetch
	// asks for 1 MiB at a time, and every ReadAt through a session is a
	// gRPC round trip of its own, carried inside the session's stream.
	readAheadChunk = 4 << 20
	// readAheadDepth is how many chunks are read ahead, in flight at once,
	// so that the session's round trips overlap each other and the
	// daemon's writes to its content store. It bounds the memory a fetch
	// holds to readAheadDepth*readAheadChunk.
	readAheadDepth = 3
	// readAheadSlots bounds the chunks read ahead at once by all fetches
	// of the daemon: the daemon fetches several blobs at a time, and each
	// holding depth chunks would add tens of MB to its memory for no
	// faster session. A fetch that finds no slot free reads as it asks.
	readAheadSlots = 6
)

// readAheadBudget holds a token per chunk read ahead, in the whole daemon.
var readAheadBudget = make(chan struct{}, readAheadSlots)

// readAheadReaderAt reads a blob that is read front to back ahead of its
// reader, in chunks of readAheadChunk, readAheadDepth of them at once.
//
// Reads over a session are round trips through the client: read one at a
// time, the fetch of a lazily imported blob waits for each in turn, then for
// the write to the content store, and is slower than a registry's single
// HTTP response. A read that does not continue the previous one (random
// access) goes to the source as it is, and drops what was read ahead.
type readAheadReaderAt struct {
	// ra must allow concurrent ReadAt calls.
	ra    content.ReaderAt
	size  int64
	chunk int64
	depth int
	// slots holds a token for every chunk read ahead and not yet
	// consumed, here and in every other reader sharing it.
	slots chan struct{}

	mu sync.Mutex
	// queue holds the chunks read ahead, contiguous and in order.
	queue []*readAheadBuf
	// last is where the previous read ended; -1 before any read.
	last int64
	free [][]byte
	wg   sync.WaitGroup
}

type readAheadBuf struct {
	off  int64
	buf  []byte
	n    int
	err  error
	done chan struct{}
}

var _ content.ReaderAt = &readAheadReaderAt{}

// newReadAheadReaderAt reads ra, size bytes long, ahead of its reader, with
// at most depth chunks in flight, and only as many as it gets a token of
// slots for. A blob of unknown size, or one that fits in a chunk, is
// returned as is.
func newReadAheadReaderAt(ra content.ReaderAt, size int64, chunk int64, depth int, slots chan struct{}) content.ReaderAt {
	if size <= chunk || chunk <= 0 || depth <= 0 {
		return ra
	}
	return &readAheadReaderAt{ra: ra, size: size, chunk: chunk, depth: depth, slots: slots, last: -1}
}

func (r *readAheadReaderAt) ReadAt(b []byte, off int64) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	r.mu.Lock()
	sequential := off == 0 || off == r.last
	if !sequential || !r.covers(off) {
		r.drop()
	}
	if !sequential {
		// Random access, or a read that starts mid-blob: read it as it
		// is, and read ahead only if the next read continues it.
		r.last = -1
		r.mu.Unlock()
		n, err := r.ra.ReadAt(b, off)
		r.mu.Lock()
		r.last = off + int64(n)
		r.mu.Unlock()
		return n, err
	}
	var n int
	for n < len(b) {
		at := off + int64(n)
		if at >= r.size {
			r.last = at
			r.mu.Unlock()
			return n, io.EOF
		}
		if !r.covers(at) {
			// a concurrent read moved the queue elsewhere
			r.drop()
		}
		r.fill(at)
		if len(r.queue) == 0 {
			// no slot free: read what is asked, as it is asked
			r.mu.Unlock()
			m, err := r.ra.ReadAt(b[n:], at)
			r.mu.Lock()
			n += m
			r.last = off + int64(n)
			if err != nil {
				r.mu.Unlock()
				return n, err
			}
			continue
		}
		c := r.queue[0]
		r.mu.Unlock()
		<-c.done
		r.mu.Lock()
		if len(r.queue) == 0 || r.queue[0] != c {
			continue
		}
		if i := int(at - c.off); i < c.n {
			n += copy(b[n:], c.buf[i:c.n])
		}
		if off+int64(n) < c.off+int64(c.n) {
			break // b is full
		}
		if c.n < len(c.buf) {
			// a short chunk: the source failed or ended early
			r.drop()
			r.last = off + int64(n)
			r.mu.Unlock()
			return n, c.err
		}
		// consumed: its buffer serves a later chunk
		r.queue = r.queue[1:]
		r.free = append(r.free, c.buf)
		<-r.slots
	}
	r.last = off + int64(n)
	if r.last < r.size {
		r.fill(r.last)
	}
	r.mu.Unlock()
	return n, nil
}

// covers reports whether the chunks read ahead start at off; r.mu is held.
func (r *readAheadReaderAt) covers(off int64) bool {
	return len(r.queue) > 0 && r.queue[0].off <= off && off < r.queue[0].off+int64(len(r.queue[0].buf))
}

// fill starts reads of the chunks from off on until depth are in flight or
// done; r.mu is held.
func (r *readAheadReaderAt) fill(off int64) {
	for len(r.queue) < r.depth {
		// chunks are aligned to the first read, not to the blob
		next := off
		if k := len(r.queue); k > 0 {
			next = r.queue[k-1].off + int64(len(r.queue[k-1].buf))
		}
		if next >= r.size {
			return
		}
		select {
		case r.slots <- struct{}{}:
		default:
			return
		}
		r.queue = append(r.queue, r.start(next))
	}
}

// start reads the chunk at off in the background; r.mu is held.
func (r *readAheadReaderAt) start(off int64) *readAheadBuf {
	size := min(r.chunk, r.size-off)
	var buf []byte
	if k := len(r.free); k > 0 {
		buf, r.free = r.free[k-1][:size], r.free[:k-1]
	} else {
		buf = make([]byte, size, r.chunk)
	}
	c := &readAheadBuf{off: off, buf: buf, done: make(chan struct{})}
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		defer close(c.done)
		c.n, c.err = io.ReadFull(io.NewSectionReader(r.ra, off, size), buf)
		switch {
		case c.n == len(buf):
			c.err = nil
		case c.err == nil || errors.Is(c.err, io.ErrUnexpectedEOF):
			c.err = io.EOF
		}
	}()
	return c
}

// drop forgets the chunks read ahead; reads still in flight finish into
// buffers of their own, and give their slots back then. r.mu is held.
func (r *readAheadReaderAt) drop() {
	for _, c := range r.queue {
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			<-c.done
			<-r.slots
		}()
	}
	r.queue = nil
}

func (r *readAheadReaderAt) Size() int64 { return r.size }

// Close waits for the reads in flight, which use the source, then closes
// it.
func (r *readAheadReaderAt) Close() error {
	r.mu.Lock()
	r.drop()
	r.mu.Unlock()
	r.wg.Wait()
	return r.ra.Close()
}
