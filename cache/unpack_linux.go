package cache

import (
	"archive/tar"
	"context"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/diff"
	"github.com/containerd/containerd/v2/pkg/archive"
	"github.com/containerd/continuity/fs"
	"github.com/containerd/continuity/sysx"
	"github.com/moby/buildkit/snapshot"
	"github.com/moby/buildkit/util/bklog"
	"github.com/moby/buildkit/util/overlay"
	"github.com/moby/sys/userns"
	digest "github.com/opencontainers/go-digest"
	ocispecs "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/pkg/errors"
	"golang.org/x/sys/unix"
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

	dirs := &implicitDirs{root: filepath.Clean(upper), dirs: map[string]*implicitDir{}}
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
	dirs    map[string]*implicitDir // by path under root
	order   []*implicitDir          // as created, parents first
	lastDir string                  // the directory of the last entry, which exists
}

type implicitDir struct {
	path   string
	parent *implicitDir // the implicit directory it was created in
	// the group of the directory and whether it is set-group-ID, once
	// fixed up: a directory created in it takes the group.
	setgid bool
	gid    uint32
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
	for _, rel := range slices.Backward(missing) {
		e := &implicitDir{path: rel, parent: d.dirs[filepath.Dir(rel)]}
		d.dirs[rel] = e
		d.order = append(d.order, e)
	}
}

// fixup gives each implicit directory the attributes a sequential apply on
// lowers, the parent's layer directories nearest first, would have given it.
func (d *implicitDirs) fixup(lowers []string) error {
	for _, e := range d.order {
		if d.dirs[e.path] != e {
			continue
		}
		// Skip a directory that a later entry removed with its parent.
		p := d.root + e.path
		if rp, err := fs.RootPath(d.root, e.path); err != nil || rp != p {
			continue
		}
		if fi, err := os.Lstat(p); err != nil || !fi.IsDir() {
			continue
		}
		lower, fi, err := nearestLowerDir(lowers, e.path)
		if err != nil {
			return err
		}
		if fi == nil {
			// Created 0755 as in a sequential apply, where a directory
			// made in a set-group-ID directory takes its group.
			if e.parent != nil && e.parent.setgid {
				if err := os.Lchown(p, -1, int(e.parent.gid)); err != nil {
					return errors.WithStack(err)
				}
			}
			continue
		}
		e.setgid, e.gid = fi.Mode()&os.ModeSetgid != 0, fi.Sys().(*syscall.Stat_t).Gid
		if err := copyDirAttrs(p, lower, fi); err != nil {
			return errors.Wrapf(err, "failed to copy attributes of %s", lower)
		}
	}
	return nil
}

// nearestLowerDir returns the directory at rel in the nearest lower that has
// something there, or nothing if that is not a directory.
func nearestLowerDir(lowers []string, rel string) (string, os.FileInfo, error) {
	for _, l := range lowers {
		lp, err := fs.RootPath(l, rel)
		if err != nil {
			return "", nil, err
		}
		fi, err := os.Lstat(lp)
		if os.IsNotExist(err) {
			continue
		} else if err != nil {
			return "", nil, err
		}
		if !fi.IsDir() {
			return "", nil, nil
		}
		return lp, fi, nil
	}
	return "", nil, nil
}

func copyDirAttrs(p, lower string, fi os.FileInfo) error {
	keys, err := sysx.LListxattr(lower)
	if err != nil && !errors.Is(err, unix.ENOTSUP) {
		return err
	}
	for _, k := range keys {
		// A directory with an ACL passes it on to what is created in it
		// during the apply, which a fixup after the apply cannot do.
		if strings.HasPrefix(k, "system.posix_acl_") {
			return errApplySequentially
		}
	}
	st := fi.Sys().(*syscall.Stat_t)
	if err := os.Lchown(p, int(st.Uid), int(st.Gid)); err != nil {
		return err
	}
	if err := os.Chmod(p, fi.Mode()); err != nil {
		return err
	}
	// The sequential apply copies the times too, then creating entries in
	// the directory sets its mtime.
	times := []unix.Timespec{unix.NsecToTimespec(st.Atim.Nano()), {Nsec: unix.UTIME_OMIT}}
	if empty, err := isEmptyDir(p); err != nil {
		return err
	} else if empty {
		times[1] = unix.NsecToTimespec(st.Mtim.Nano())
	}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, p, times, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return err
	}
	for _, k := range keys {
		if strings.HasPrefix(k, "trusted.") {
			continue
		}
		v, err := sysx.LGetxattr(lower, k)
		if errors.Is(err, unix.ENOTSUP) || errors.Is(err, unix.ENODATA) {
			continue
		} else if err != nil {
			return err
		}
		if err := unix.Lsetxattr(p, k, v, unix.XATTR_CREATE); err != nil && !errors.Is(err, unix.EEXIST) && !errors.Is(err, unix.ENOTSUP) {
			return errors.Wrapf(err, "failed to set xattr %s", k)
		}
	}
	return nil
}

func isEmptyDir(p string) (bool, error) {
	f, err := os.Open(p)
	if err != nil {
		return false, err
	}
	defer f.Close()
	_, err = f.Readdirnames(1)
	if err == io.EOF {
		return true, nil
	}
	return false, err
}

// layerDirs returns the directories of the layers of a view, nearest
// first, which the overlayfs snapshotter passes as its lowerdirs.
func layerDirs(mountable snapshot.Mountable) ([]string, error) {
	mounts, release, err := mountable.Mount()
	if err != nil {
		return nil, err
	}
	defer release()
	if len(mounts) == 1 && mounts[0].Type == "bind" {
		return []string{mounts[0].Source}, nil
	}
	if len(mounts) != 1 || !overlay.IsOverlayMountType(mounts[0]) {
		return nil, errors.Errorf("unexpected mounts: %+v", mounts)
	}
	dirs, err := overlay.GetOverlayLayers(mounts[0])
	if err != nil {
		return nil, err
	}
	slices.Reverse(dirs)
	return dirs, nil
}
