package local

import (
	"errors"
	"io"
	"sync"
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	digest "github.com/opencontainers/go-digest"
	ocispecs "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/stretchr/testify/require"
)

// countingReaderAt serves b, records the reads it gets, and fails reads
// that reach failAt (when set).
type countingReaderAt struct {
	b      []byte
	failAt int64

	mu    sync.Mutex
	reads []int64
}

var errSessionRead = errors.New("session read failed")

func (c *countingReaderAt) ReadAt(p []byte, off int64) (int, error) {
	c.mu.Lock()
	c.reads = append(c.reads, off)
	c.mu.Unlock()
	if c.failAt > 0 && off+int64(len(p)) > c.failAt {
		return 0, errSessionRead
	}
	if off >= int64(len(c.b)) {
		return 0, io.EOF
	}
	n := copy(p, c.b[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (c *countingReaderAt) Size() int64  { return int64(len(c.b)) }
func (c *countingReaderAt) Close() error { return nil }

func (c *countingReaderAt) readCount() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.reads)
}

// readInSteps reads size bytes of ra front to back, step bytes at a time, as
// the daemon's fetch does.
func readInSteps(ra content.ReaderAt, size int64, step int) ([]byte, error) {
	var out []byte
	buf := make([]byte, step)
	for off := int64(0); off < size; {
		n, err := ra.ReadAt(buf[:min(int64(step), size-off)], off)
		out = append(out, buf[:n]...)
		off += int64(n)
		if err != nil {
			return out, err
		}
	}
	return out, nil
}

func TestReadAheadSequential(t *testing.T) {
	data := blobData(1000)
	for _, tc := range []struct {
		name         string
		chunk, depth int
		step         int
		wantReads    int
	}{
		{name: "reads smaller than a chunk", chunk: 64, depth: 3, step: 10, wantReads: 16},
		{name: "reads larger than a chunk", chunk: 64, depth: 2, step: 200, wantReads: 16},
		{name: "chunk divides the size", chunk: 100, depth: 4, step: 7, wantReads: 10},
		{name: "depth 1", chunk: 300, depth: 1, step: 1, wantReads: 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := &countingReaderAt{b: data}
			ra := newReadAheadReaderAt(src, int64(len(data)), int64(tc.chunk), tc.depth, make(chan struct{}, 8))
			got, err := readInSteps(ra, int64(len(data)), tc.step)
			require.NoError(t, err)
			require.NoError(t, ra.Close())
			require.Equal(t, data, got)
			// every byte read once from the source, a chunk at a time
			require.Equal(t, tc.wantReads, src.readCount())
		})
	}
}

func TestReadAheadSmallBlobIsReadAsIs(t *testing.T) {
	src := &countingReaderAt{b: blobData(100)}
	require.Same(t, content.ReaderAt(src), newReadAheadReaderAt(src, 100, 100, 3, nil))
	require.Same(t, content.ReaderAt(src), newReadAheadReaderAt(src, 0, 100, 3, nil))
}

// A read that does not continue the previous one goes to the source as it
// is; reading ahead resumes when reads are sequential again.
func TestReadAheadRandomAccess(t *testing.T) {
	data := blobData(1000)
	src := &countingReaderAt{b: data}
	ra := newReadAheadReaderAt(src, int64(len(data)), 100, 2, make(chan struct{}, 8))
	defer ra.Close()

	b := make([]byte, 10)
	n, err := ra.ReadAt(b, 500)
	require.NoError(t, err)
	require.Equal(t, data[500:510], b[:n])
	require.Equal(t, 1, src.readCount(), "a read mid-blob is not read ahead")

	n, err = ra.ReadAt(b, 510)
	require.NoError(t, err)
	require.Equal(t, data[510:520], b[:n])

	n, err = ra.ReadAt(b, 3)
	require.NoError(t, err)
	require.Equal(t, data[3:13], b[:n])

	// from the start again: read ahead, the whole blob right
	got, err := readInSteps(ra, int64(len(data)), 33)
	require.NoError(t, err)
	require.Equal(t, data, got)
}

// The verified reader on top sees a short blob as truncated and a session
// error as that error, whatever was read ahead.
func TestReadAheadSourceEndsOrFails(t *testing.T) {
	data := blobData(1000)
	for _, tc := range []struct {
		name    string
		src     *countingReaderAt
		wantErr error
		wantN   int
	}{
		{name: "source shorter than its size", src: &countingReaderAt{b: data[:450]}, wantErr: io.EOF, wantN: 450},
		{name: "source fails mid-blob", src: &countingReaderAt{b: data, failAt: 650}, wantErr: errSessionRead, wantN: 600},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ra := newReadAheadReaderAt(tc.src, int64(len(data)), 100, 3, make(chan struct{}, 8))
			var got []byte
			buf := make([]byte, 64)
			var err error
			for off := int64(0); err == nil; {
				var n int
				n, err = ra.ReadAt(buf, off)
				got = append(got, buf[:n]...)
				off += int64(n)
			}
			require.ErrorIs(t, err, tc.wantErr)
			require.Equal(t, data[:tc.wantN], got)
			require.NoError(t, ra.Close())
		})
	}
}

// Reads through the verifying reader, as the provider stacks them.
func TestReadAheadVerified(t *testing.T) {
	good := blobData(1 << 20)
	flipped := append([]byte(nil), good...)
	flipped[len(flipped)-10] ^= 0xff
	for _, tc := range []struct {
		name    string
		served  []byte
		wantErr string
	}{
		{name: "intact", served: good},
		{name: "corrupt", served: flipped, wantErr: "is corrupt"},
		{name: "truncated", served: good[:5000], wantErr: "is truncated: 5000 of 1048576 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			desc := ocispecs.Descriptor{Digest: digest.FromBytes(good), Size: int64(len(good))}
			corrupt := 0
			src := &countingReaderAt{b: tc.served}
			ra := newVerifiedReaderAt(newReadAheadReaderAt(src, desc.Size, 64<<10, 3, make(chan struct{}, 8)), desc, "local cache /c", func() { corrupt++ })
			got, err := readInSteps(ra, desc.Size, 32<<10)
			if tc.wantErr == "" {
				require.NoError(t, err)
				require.Equal(t, good, got)
				require.Equal(t, 16, src.readCount())
				return
			}
			require.ErrorContains(t, err, tc.wantErr)
			require.Equal(t, 1, corrupt)
			require.NoError(t, ra.Close())
		})
	}
}

// Readers share a budget of chunks: one that finds no slot free reads what
// it is asked, and every slot comes back once the readers are done.
func TestReadAheadBudget(t *testing.T) {
	data := blobData(1000)
	slots := make(chan struct{}, 2)
	first := &countingReaderAt{b: data}
	second := &countingReaderAt{b: data}
	ra1 := newReadAheadReaderAt(first, int64(len(data)), 100, 3, slots)
	ra2 := newReadAheadReaderAt(second, int64(len(data)), 100, 3, slots)

	b := make([]byte, 10)
	_, err := ra1.ReadAt(b, 0)
	require.NoError(t, err)
	require.Len(t, slots, 2, "the first reader holds both slots")

	got, err := readInSteps(ra2, int64(len(data)), 50)
	require.NoError(t, err)
	require.Equal(t, data, got)
	require.Equal(t, 20, second.readCount(), "no slot: every read as asked")

	got, err = readInSteps(ra1, int64(len(data)), 50)
	require.NoError(t, err)
	require.Equal(t, data, got)
	require.NoError(t, ra1.Close())
	require.NoError(t, ra2.Close())
	require.Empty(t, slots)

	// a reader closed halfway gives its slots back too
	ra3 := newReadAheadReaderAt(&countingReaderAt{b: data}, int64(len(data)), 100, 3, slots)
	_, err = ra3.ReadAt(b, 0)
	require.NoError(t, err)
	require.NoError(t, ra3.Close())
	require.Empty(t, slots)
}
