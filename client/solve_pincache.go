package client

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"

	"github.com/containerd/containerd/v2/core/content"
	digest "github.com/opencontainers/go-digest"
	ocispecs "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/pkg/errors"
)

// maxPinnedCacheBlobs bounds the files a solve keeps open for one lazily
// imported cache directory. A cache exported with mode=max holds a few
// blobs per cached step: a thousand covers large projects, and stays well
// below the open file limit Go raises itself to on Linux.
const maxPinnedCacheBlobs = 1024

// pinnedCacheStore serves a local cache directory imported with lazy=true.
// A lazy import reads a layer when a step mounts it, at any time until the
// solve ends, while another job may rotate the directory or reset it. The
// blobs the imported cache references are opened when the solve starts and
// read from those files until it ends: on Linux an open file outlives its
// unlink and its directory's rename. Other digests are read from the
// directory as it is.
type pinnedCacheStore struct {
	content.Store
	files map[digest.Digest]*os.File
}

// pinCacheBlobs opens the blobs that the cache manifest dgst in dir
// references, the manifest and the cache config included, up to limit
// files. It returns how many it found beyond the bound.
func pinCacheBlobs(ctx context.Context, cs content.Store, dir string, dgst digest.Digest, limit int) (*pinnedCacheStore, int, error) {
	s := &pinnedCacheStore{Store: cs, files: map[digest.Digest]*os.File{}}
	info, err := cs.Info(ctx, dgst)
	if err != nil {
		return nil, 0, err
	}
	dt, err := content.ReadBlob(ctx, cs, ocispecs.Descriptor{Digest: dgst, Size: info.Size})
	if err != nil {
		return nil, 0, err
	}
	// A cache manifest is an image manifest or an index (image-manifest=false).
	var m struct {
		Config    *ocispecs.Descriptor  `json:"config,omitempty"`
		Layers    []ocispecs.Descriptor `json:"layers,omitempty"`
		Manifests []ocispecs.Descriptor `json:"manifests,omitempty"`
	}
	if err := json.Unmarshal(dt, &m); err != nil {
		return nil, 0, errors.Wrapf(err, "failed to parse cache manifest %s", dgst)
	}
	blobs := append([]ocispecs.Descriptor{{Digest: dgst}}, m.Layers...)
	blobs = append(blobs, m.Manifests...)
	if m.Config != nil {
		blobs = append(blobs, *m.Config)
	}
	unpinned := 0
	for _, b := range blobs {
		if _, ok := s.files[b.Digest]; ok {
			continue
		}
		if len(s.files) == limit {
			unpinned++
			continue
		}
		if err := b.Digest.Validate(); err != nil {
			s.Close()
			return nil, 0, err
		}
		f, err := os.Open(filepath.Join(dir, "blobs", b.Digest.Algorithm().String(), b.Digest.Encoded()))
		if err != nil {
			// Missing already: the daemon drops what needs it.
			continue
		}
		s.files[b.Digest] = f
	}
	return s, unpinned, nil
}

func (s *pinnedCacheStore) Info(ctx context.Context, dgst digest.Digest) (content.Info, error) {
	f, ok := s.files[dgst]
	if !ok {
		return s.Store.Info(ctx, dgst)
	}
	fi, err := f.Stat()
	if err != nil {
		return content.Info{}, errors.WithStack(err)
	}
	return content.Info{Digest: dgst, Size: fi.Size(), CreatedAt: fi.ModTime(), UpdatedAt: fi.ModTime()}, nil
}

func (s *pinnedCacheStore) ReaderAt(ctx context.Context, desc ocispecs.Descriptor) (content.ReaderAt, error) {
	f, ok := s.files[desc.Digest]
	if !ok {
		return s.Store.ReaderAt(ctx, desc)
	}
	fi, err := f.Stat()
	if err != nil {
		return nil, errors.WithStack(err)
	}
	return &pinnedReaderAt{File: f, size: fi.Size()}, nil
}

// Close closes the pinned files; reads of them fail afterwards.
func (s *pinnedCacheStore) Close() error {
	for _, f := range s.files {
		f.Close()
	}
	return nil
}

// pinnedReaderAt reads a pinned file, which stays open until the store is
// closed.
type pinnedReaderAt struct {
	*os.File
	size int64
}

func (r *pinnedReaderAt) Size() int64  { return r.size }
func (r *pinnedReaderAt) Close() error { return nil }
