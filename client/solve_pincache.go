package client

import (
	"context"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"sync"

	"github.com/containerd/containerd/v2/core/content"
	cacheimporttypes "github.com/moby/buildkit/cache/remotecache/v1/types"
	"github.com/moby/buildkit/util/bklog"
	digest "github.com/opencontainers/go-digest"
	ocispecs "github.com/opencontainers/image-spec/specs-go/v1"
	pkgerrors "github.com/pkg/errors"
)

// maxPinnedCacheBlobs bounds the files a solve keeps open for one lazily
// imported cache directory. A cache exported with mode=max holds a few
// blobs per cached step: a thousand covers large projects, and stays well
// below the open file limit Go raises itself to on Linux and macOS.
const maxPinnedCacheBlobs = 1024

// maxPinnedManifestSize is the largest cache manifest read for pinning, as
// the daemon's importer reads no larger one.
const maxPinnedManifestSize = 1 << 20

// canPinCacheBlobs tells whether an open file outlives its unlink and the
// rename of its directory. On Windows an open file blocks both: pinning
// would make other jobs' cleanup of the directory fail instead.
var canPinCacheBlobs = runtime.GOOS != "windows"

// pinnedCacheStore serves a local cache directory imported with lazy=true.
// A lazy import reads a layer when a step mounts it, at any time until the
// solve ends, while another job may rotate the directory or reset it. The
// blobs the imported cache references are opened when the solve starts and
// read from those files until it ends. Other digests are read from the
// directory as it is.
type pinnedCacheStore struct {
	content.Store
	files map[digest.Digest]pinnedBlob

	mu     sync.RWMutex
	closed bool
}

type pinnedBlob struct {
	f    *os.File
	info content.Info
}

// pinLazyImports pins the blobs of each directory that cacheOpt imports
// lazily and serves the directory from them, when the solve attaches the
// client's stores to its session.
func pinLazyImports(ctx context.Context, cacheOpt *cacheOptions, attached bool) []*pinnedCacheStore {
	if !attached || !canPinCacheBlobs {
		return nil
	}
	var pinned []*pinnedCacheStore
	for path, dgsts := range cacheOpt.lazyImports {
		key := "local:" + path
		store, unpinned, err := pinCacheBlobs(ctx, cacheOpt.contentStores[key], path, dgsts, maxPinnedCacheBlobs)
		pinned = append(pinned, store)
		cacheOpt.contentStores[key] = store
		l := bklog.G(ctx).WithField("cache_store_path", path)
		if err != nil {
			l.WithError(err).Warnf("failed to open the blobs of a lazily imported cache; %d are read from the directory as it changes", unpinned)
		} else if unpinned > 0 {
			l.Warnf("lazily imported cache references more than %d blobs; %d are read from the directory as it changes", maxPinnedCacheBlobs, unpinned)
		}
	}
	return pinned
}

func closePinned(pinned []*pinnedCacheStore) {
	for _, s := range pinned {
		s.Close()
	}
}

// pinCacheBlobs opens the blobs that the cache manifests dgsts in dir
// reference: every manifest and cache config first, then the layers, up to
// limit files in all. It returns how many blobs it left to the directory.
// A failure to open a blob other than its absence, such as running out of
// file descriptors, stops the pinning: the error is returned, with the
// store serving what it opened and the rest counted as left.
func pinCacheBlobs(ctx context.Context, cs content.Store, dir string, dgsts []digest.Digest, limit int) (*pinnedCacheStore, int, error) {
	s := &pinnedCacheStore{Store: cs, files: map[digest.Digest]pinnedBlob{}}
	var first, layers []digest.Digest
	for _, dgst := range dgsts {
		config, rest, err := cacheManifestBlobs(ctx, cs, dgst)
		if err != nil {
			return s, 0, err
		}
		first = append(first, dgst)
		if config != "" {
			first = append(first, config)
		}
		layers = append(layers, rest...)
	}
	blobs := append(first, layers...)
	for i, dgst := range blobs {
		if _, ok := s.files[dgst]; ok {
			continue
		}
		if len(s.files) == limit {
			return s, countNew(s.files, blobs[i:]), nil
		}
		if err := dgst.Validate(); err != nil {
			return s, countNew(s.files, blobs[i:]), err
		}
		f, err := os.Open(filepath.Join(dir, "blobs", dgst.Algorithm().String(), dgst.Encoded()))
		if errors.Is(err, fs.ErrNotExist) {
			// Missing already: the daemon drops what needs it.
			continue
		}
		if err == nil {
			var fi os.FileInfo
			if fi, err = f.Stat(); err == nil {
				s.files[dgst] = pinnedBlob{f: f, info: content.Info{Digest: dgst, Size: fi.Size(), CreatedAt: fi.ModTime(), UpdatedAt: fi.ModTime()}}
				continue
			}
			f.Close()
		}
		return s, countNew(s.files, blobs[i:]), pkgerrors.WithStack(err)
	}
	return s, 0, nil
}

// cacheManifestBlobs reads the cache manifest dgst, an image manifest or an
// index (image-manifest=false), and returns the digest of its cache config
// and those of its other blobs.
func cacheManifestBlobs(ctx context.Context, cs content.Store, dgst digest.Digest) (digest.Digest, []digest.Digest, error) {
	info, err := cs.Info(ctx, dgst)
	if err != nil {
		return "", nil, err
	}
	if info.Size > maxPinnedManifestSize {
		return "", nil, pkgerrors.Errorf("cache manifest %s is %d bytes, more than %d", dgst, info.Size, maxPinnedManifestSize)
	}
	dt, err := content.ReadBlob(ctx, cs, ocispecs.Descriptor{Digest: dgst, Size: info.Size})
	if err != nil {
		return "", nil, err
	}
	var m struct {
		Config    ocispecs.Descriptor   `json:"config"`
		Layers    []ocispecs.Descriptor `json:"layers"`
		Manifests []ocispecs.Descriptor `json:"manifests"`
	}
	if err := json.Unmarshal(dt, &m); err != nil {
		return "", nil, pkgerrors.Wrapf(err, "failed to parse cache manifest %s", dgst)
	}
	config := m.Config.Digest
	var rest []digest.Digest
	for _, d := range append(m.Layers, m.Manifests...) {
		if d.MediaType == cacheimporttypes.CacheConfigMediaTypeV0 {
			config = d.Digest
			continue
		}
		rest = append(rest, d.Digest)
	}
	return config, rest, nil
}

// countNew counts the distinct digests of blobs not in files.
func countNew(files map[digest.Digest]pinnedBlob, blobs []digest.Digest) int {
	seen := map[digest.Digest]struct{}{}
	for _, d := range blobs {
		if _, ok := files[d]; !ok {
			seen[d] = struct{}{}
		}
	}
	return len(seen)
}

func (s *pinnedCacheStore) Info(ctx context.Context, dgst digest.Digest) (content.Info, error) {
	if b, ok := s.files[dgst]; ok {
		return b.info, nil
	}
	return s.Store.Info(ctx, dgst)
}

func (s *pinnedCacheStore) ReaderAt(ctx context.Context, desc ocispecs.Descriptor) (content.ReaderAt, error) {
	b, ok := s.files[desc.Digest]
	if !ok {
		return s.Store.ReaderAt(ctx, desc)
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return nil, pkgerrors.WithStack(os.ErrClosed)
	}
	return &pinnedReaderAt{s: s, f: b.f, size: b.info.Size}, nil
}

// Close closes the pinned files; reads of them fail afterwards. It may be
// called more than once.
func (s *pinnedCacheStore) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.closed {
		s.closed = true
		for _, b := range s.files {
			b.f.Close()
		}
	}
	return nil
}

// pinnedReaderAt reads a pinned file, which stays open until the store is
// closed.
type pinnedReaderAt struct {
	s    *pinnedCacheStore
	f    *os.File
	size int64
}

func (r *pinnedReaderAt) ReadAt(p []byte, off int64) (int, error) {
	r.s.mu.RLock()
	defer r.s.mu.RUnlock()
	if r.s.closed {
		return 0, pkgerrors.WithStack(os.ErrClosed)
	}
	return r.f.ReadAt(p, off)
}

func (r *pinnedReaderAt) Size() int64  { return r.size }
func (r *pinnedReaderAt) Close() error { return nil }
