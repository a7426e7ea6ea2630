package scenario

import (
	"bufio"
	"crypto/sha256"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/pkg/errors"
)

// DirBytes is what `du -sb` reports: the apparent size of everything under
// dir, each inode counted once.
func DirBytes(dir string) (int64, error) {
	var total int64
	seen := map[uint64]bool{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if os.IsNotExist(err) {
				return nil
			}
			return err
		}
		fi, err := d.Info()
		if err != nil {
			if os.IsNotExist(err) {
				return nil
			}
			return err
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Nlink > 1 && !fi.IsDir() {
			if seen[st.Ino] {
				return nil
			}
			seen[st.Ino] = true
		}
		total += fi.Size()
		return nil
	})
	return total, errors.Wrapf(err, "failed to measure %s", dir)
}

// CloneCache copies a local cache directory to dst for one build: blobs
// are content addressed and never rewritten, so they are hard links; every
// other file (index.json, oci-layout, ingest state) is copied, because the
// exporter rewrites it.
func CloneCache(src, dst string) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		target := filepath.Join(dst, rel)
		switch {
		case d.IsDir():
			return os.MkdirAll(target, 0o755)
		case strings.HasPrefix(rel, "blobs"+string(filepath.Separator)):
			return errors.WithStack(os.Link(p, target))
		default:
			return copyFile(p, target)
		}
	})
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return errors.WithStack(err)
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return errors.WithStack(err)
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, fi.Mode().Perm())
	if err != nil {
		return errors.WithStack(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return errors.WithStack(err)
	}
	return errors.WithStack(out.Close())
}

// RemoveAll removes dir after unmounting anything still mounted below it
// (a daemon killed mid-build can leave overlay mounts behind). Only mounts
// under dir are touched.
func RemoveAll(dir string) error {
	if dir == "" || dir == "/" {
		return errors.Errorf("refusing to remove %q", dir)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return errors.WithStack(err)
	}
	for _, m := range mountsUnder(abs) {
		_ = syscall.Unmount(m, syscall.MNT_DETACH)
	}
	return errors.Wrapf(os.RemoveAll(abs), "failed to remove %s", abs)
}

func mountsUnder(dir string) []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	s := bufio.NewScanner(f)
	for s.Scan() {
		fields := strings.Fields(s.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMount(fields[4])
		if strings.HasPrefix(mp, dir+"/") {
			out = append(out, mp)
		}
	}
	// deepest first
	sort.Slice(out, func(i, j int) bool { return len(out[i]) > len(out[j]) })
	return out
}

func unescapeMount(s string) string {
	return strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`).Replace(s)
}

// HashDir reads every regular file under dir and computes its sha256, as
// the least a cache export that writes them must spend on them: it returns
// how long that took and how many bytes it read.
func HashDir(dir string) (time.Duration, int64, error) {
	start := time.Now()
	var total int64
	buf := make([]byte, 1<<20)
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		h := sha256.New()
		n, err := io.CopyBuffer(h, f, buf)
		total += n
		_ = h.Sum(nil)
		return err
	})
	return time.Since(start), total, errors.WithStack(err)
}
