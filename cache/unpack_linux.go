package cache

import (
	"archive/tar"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/diff"
	"github.com/containerd/containerd/v2/pkg/archive"
	"github.com/containerd/continuity/fs"
	"github.com/moby/buildkit/util/bklog"
	"github.com/moby/sys/userns"
	digest "github.com/opencontainers/go-digest"
	ocispecs "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/pkg/errors"
)

// In a user namespace overlay whiteouts (trusted.overlay.opaque, and a
// mknod the applier does not attempt there) cannot be written in place, and
// the sequential apply goes through a mounted overlay instead.
var parallelUnpackSupported = !userns.RunningInUserNS()

// applyInPlace applies desc into upper, the directory of an overlayfs
// snapshot that has no parent yet, as the applier writes a snapshot that has
// parents: in place, with overlay whiteouts. It returns the diffID and the
// directories that the archive created without listing them.
func applyInPlace(ctx context.Context, cs content.Provider, desc ocispecs.Descriptor, upper string) (digest.Digest, *implicitDirs, error) {
	start := time.Now()
	ra, err := cs.ReaderAt(ctx, desc)
	if err != nil {
		return "", nil, errors.Wrap(err, "failed to get reader from content store")
	}
	defer ra.Close()

	processors := []diff.StreamProcessor{diff.NewProcessorChain(desc.MediaType, content.NewReader(ra))}
	for processors[len(processors)-1].MediaType() != ocispecs.MediaTypeImageLayer {
		p, err := diff.GetProcessor(ctx, processors[len(processors)-1], nil)
		if err != nil {
			return "", nil, errors.Wrapf(err, "failed to get stream processor for %s", desc.MediaType)
		}
		defer p.Close()
		processors = append(processors, p)
	}
	digester := digest.Canonical.Digester()
	r := io.TeeReader(processors[len(processors)-1], digester.Hash())

	dirs := &implicitDirs{root: filepath.Clean(upper), dirs: map[string]struct{}{}}
	if _, err := archive.Apply(ctx, upper, r,
		archive.WithConvertWhiteout(archive.OverlayConvertWhiteout),
		archive.WithFilter(dirs.filter)); err != nil {
		return "", nil, err
	}
	if _, err := io.Copy(io.Discard, r); err != nil {
		return "", nil, err
	}
	for _, p := range processors {
		if ep, ok := p.(interface{ Err() error }); ok && ep.Err() != nil {
			return "", nil, ep.Err()
		}
	}
	bklog.G(ctx).WithFields(map[string]any{
		"d":      time.Since(start),
		"digest": desc.Digest,
		"size":   desc.Size,
		"media":  desc.MediaType,
	}).Debugf("diff applied")
	return digester.Digest(), dirs, nil
}

// implicitDirs tracks the directories the archive creates because an entry
// is under them and no entry lists them. With no parents to look at, the
// applier creates them 0755 and owned by the daemon, where a sequential
// apply copies the owner, mode, times and xattrs of the directory at the
// same path in the nearest lower layer that has it (mkparent in
// containerd's pkg/archive).
type implicitDirs struct {
	root    string
	dirs    map[string]struct{} // by path under root
	lastDir string              // the directory of the last entry, which exists
}

func (d *implicitDirs) needFixup() bool {
	return d != nil && len(d.dirs) > 0
}

// filter sees each entry before the applier creates the missing parents of
// the entry's path, resolved in upper as the applier resolves it.
func (d *implicitDirs) filter(hdr *tar.Header) (bool, error) {
	dir, base := filepath.Split(hdr.Name)
	if dir == d.lastDir && len(d.dirs) == 0 {
		return true, nil
	}
	ppath, err := fs.RootPath(d.root, dir)
	if err != nil {
		return true, nil // the applier fails on it
	}
	if dir != d.lastDir {
		d.addMissing(ppath)
		d.lastDir = dir
	}
	if len(d.dirs) > 0 && !strings.HasPrefix(base, ".wh.") {
		// An entry for a directory that was created implicitly merges into
		// it, or replaces it: its attributes then depend on the order of
		// the entries. Leave such a layer to the sequential apply.
		if _, ok := d.dirs[filepath.Join(ppath, filepath.Join("/", base))[len(d.root):]]; ok {
			return false, errApplySequentially
		}
	}
	return true, nil
}

func (d *implicitDirs) addMissing(p string) {
	var missing []string
	for ; len(p) > len(d.root); p = filepath.Dir(p) {
		if _, err := os.Lstat(p); err == nil {
			break
		}
		missing = append(missing, p[len(d.root):])
	}
	for _, rel := range missing {
		d.dirs[rel] = struct{}{}
	}
}
