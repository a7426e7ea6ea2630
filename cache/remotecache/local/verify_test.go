package local

import (
	"bytes"
	"context"
	"io"
	"strconv"
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	contentlocal "github.com/containerd/containerd/v2/plugins/content/local"
	"github.com/moby/buildkit/util/contentutil"
	digest "github.com/opencontainers/go-digest"
	ocispecs "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/stretchr/testify/require"
)

// blobData is n bytes of incompressible test content.
func blobData(n int) []byte {
	out := make([]byte, 0, n+64)
	for i := 0; len(out) < n; i++ {
		out = append(out, digest.FromString(strconv.Itoa(i)).Encoded()...)
	}
	return out[:n]
}

// readerAtBytes serves b as a content.ReaderAt.
type readerAtBytes struct{ *bytes.Reader }

func (readerAtBytes) Close() error { return nil }

func newReaderAtBytes(b []byte) content.ReaderAt { return readerAtBytes{bytes.NewReader(b)} }

func TestVerifiedReaderAt(t *testing.T) {
	good := blobData(100 << 10)
	desc := ocispecs.Descriptor{Digest: digest.FromBytes(good), Size: int64(len(good))}
	flipped := bytes.Clone(good)
	flipped[len(flipped)/2] ^= 0xff

	for _, tc := range []struct {
		name    string
		served  []byte
		wantErr string
	}{
		{name: "intact", served: good},
		{name: "same size, other bytes", served: flipped, wantErr: "is corrupt: its content has digest " + digest.FromBytes(flipped).String()},
		{name: "short", served: good[:1000], wantErr: "is truncated: 1000 of 102400 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			corrupt := 0
			ra := newVerifiedReaderAt(newReaderAtBytes(tc.served), desc, "local cache /c", func() { corrupt++ })
			// Read as the daemon's fetch does: front to back, in chunks.
			got, err := io.ReadAll(io.NewSectionReader(ra, 0, desc.Size))
			if tc.wantErr == "" {
				require.NoError(t, err)
				require.Equal(t, good, got)
				require.Zero(t, corrupt)
				return
			}
			require.ErrorContains(t, err, "local cache /c: blob "+desc.Digest.String()+" "+tc.wantErr)
			require.ErrorContains(t, err, "delete the cache directory or export the cache again")
			require.Equal(t, 1, corrupt)
			require.Less(t, len(got), len(good), "the last bytes of a bad blob are withheld")
		})
	}
}

// A resumed fetch starts reading past offset 0 (the daemon holds the first
// part from an earlier attempt); the check must still cover the whole blob.
func TestVerifiedReaderAtResumedFetch(t *testing.T) {
	good := blobData(1 << 20)
	desc := ocispecs.Descriptor{Digest: digest.FromBytes(good), Size: int64(len(good))}
	half := desc.Size / 2
	readTail := func(served []byte) error {
		ra := newVerifiedReaderAt(newReaderAtBytes(served), desc, "local cache /c", nil)
		_, err := io.ReadAll(io.NewSectionReader(ra, half, desc.Size-half))
		return err
	}
	require.NoError(t, readTail(good))

	bad := bytes.Clone(good)
	bad[10] ^= 0xff // in the part the daemon already holds
	require.ErrorContains(t, readTail(bad), "blob "+desc.Digest.String()+" is corrupt")
}

// Without a digest or size to check against, reads pass through.
func TestVerifiedReaderAtNothingToCheck(t *testing.T) {
	ra := newReaderAtBytes([]byte("x"))
	require.Equal(t, ra, newVerifiedReaderAt(ra, ocispecs.Descriptor{Digest: digest.FromString("x")}, "c", nil))
	require.Equal(t, ra, newVerifiedReaderAt(ra, ocispecs.Descriptor{Digest: "bad", Size: 1}, "c", nil))
}

// The daemon's fetch into its content store (contentutil.Copy, as an unlazy
// runs it) through a verified reader: a corrupt blob fails the copy, and an
// onCorrupt that aborts the ingest leaves nothing to resume, so the next
// fetch from a repaired source succeeds.
func TestVerifiedReaderAtCopyIntoContentStore(t *testing.T) {
	good := blobData(3 << 20)
	desc := ocispecs.Descriptor{Digest: digest.FromBytes(good), Size: int64(len(good))}
	bad := bytes.Clone(good)
	bad[len(bad)/2] ^= 0xff

	daemon, err := contentlocal.NewStore(t.TempDir())
	require.NoError(t, err)
	source := func(b []byte) content.Provider {
		return providerFunc(func(ocispecs.Descriptor) (content.ReaderAt, error) {
			return newVerifiedReaderAt(newReaderAtBytes(b), desc, "local cache /c", func() {
				statuses, err := daemon.ListStatuses(t.Context())
				require.NoError(t, err)
				require.Len(t, statuses, 1, "the fetch's own ingest, still open")
				require.NoError(t, daemon.Abort(t.Context(), statuses[0].Ref))
			}), nil
		})
	}

	err = contentutil.Copy(t.Context(), daemon, source(bad), desc, "", nil)
	require.ErrorContains(t, err, "blob "+desc.Digest.String()+" is corrupt")
	statuses, err := daemon.ListStatuses(t.Context())
	require.NoError(t, err)
	require.Empty(t, statuses, "no partial ingest is left")

	require.NoError(t, contentutil.Copy(t.Context(), daemon, source(good), desc, "", nil))
	got, err := content.ReadBlob(t.Context(), daemon, desc)
	require.NoError(t, err)
	require.Equal(t, good, got)
}

type providerFunc func(ocispecs.Descriptor) (content.ReaderAt, error)

func (f providerFunc) ReaderAt(_ context.Context, desc ocispecs.Descriptor) (content.ReaderAt, error) {
	return f(desc)
}
