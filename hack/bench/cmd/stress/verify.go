package main

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/pkg/errors"
)

// hashFiles computes what sha256sum prints for each file of the base
// image, from the files on this machine the image was made of.
func hashFiles(files map[string]string) (map[string]string, error) {
	want := make(map[string]string, len(files))
	for inImage, src := range files {
		f, err := os.Open(src)
		if err != nil {
			return nil, errors.WithStack(err)
		}
		h := sha256.New()
		_, err = io.Copy(h, f)
		f.Close()
		if err != nil {
			return nil, errors.Wrapf(err, "failed to hash %s", src)
		}
		want[inImage] = hex.EncodeToString(h.Sum(nil))
	}
	return want, nil
}

// checkOutput compares the image build j exported with --output type=local
// to what it must hold: every file of the base with its content (read from
// the lazily imported layers of the final stage), its stamp, and the
// checksums of every base file as read by stage job (the base mounted by a
// new step) and by the common stages (when the directory had them, as
// imported; else as built again).
func checkOutput(dir string, j *job, want map[string]string) error {
	got, err := hashFiles(rebase(dir, want))
	if err != nil {
		return err
	}
	for p, w := range want {
		if got[filepath.Join(dir, p)] != w {
			return errors.Errorf("%s%s has sha256 %s, want %s", dir, p, got[filepath.Join(dir, p)], w)
		}
	}
	stamp, err := os.ReadFile(filepath.Join(dir, "job", "stamp"))
	if err != nil {
		return errors.WithStack(err)
	}
	if w := fmt.Sprintf("round %d build %d\n", j.round, j.index); string(stamp) != w {
		return errors.Errorf("%s/job/stamp is %q, want %q", dir, stamp, w)
	}
	if err := checkSums(filepath.Join(dir, "job", "job.sums"), want); err != nil {
		return err
	}
	for i, v := range j.variants {
		sub := filepath.Join(dir, "out")
		if i > 0 {
			sub = filepath.Join(dir, fmt.Sprintf("common%d", v))
		}
		variant, err := os.ReadFile(filepath.Join(sub, "variant"))
		if err != nil {
			return errors.WithStack(err)
		}
		if w := fmt.Sprintf("%d\n", v); string(variant) != w {
			return errors.Errorf("%s/variant is %q, want %q", sub, variant, w)
		}
		if err := checkSums(filepath.Join(sub, "common.sums"), want); err != nil {
			return err
		}
	}
	return nil
}

// rebase maps each path of files to itself under dir, for hashFiles.
func rebase(dir string, files map[string]string) map[string]string {
	out := make(map[string]string, len(files))
	for p := range files {
		out[filepath.Join(dir, p)] = filepath.Join(dir, p)
	}
	return out
}

// checkSums reads sha256sum's output in path and compares it to want,
// naming the first differences.
func checkSums(path string, want map[string]string) error {
	got, err := readSums(path)
	if err != nil {
		return err
	}
	var diffs []string
	for p, w := range want {
		switch g, ok := got[p]; {
		case !ok:
			diffs = append(diffs, p+" missing")
		case g != w:
			diffs = append(diffs, fmt.Sprintf("%s has sha256 %s, want %s", p, g, w))
		}
	}
	for p := range got {
		if _, ok := want[p]; !ok {
			diffs = append(diffs, p+" not in the base image")
		}
	}
	if len(diffs) == 0 {
		return nil
	}
	sort.Strings(diffs)
	more := ""
	if len(diffs) > 3 {
		more = fmt.Sprintf(" (and %d more)", len(diffs)-3)
		diffs = diffs[:3]
	}
	return errors.Errorf("%s: %s%s", path, strings.Join(diffs, "; "), more)
}

// readSums parses "<hex>  <path>" lines.
func readSums(path string) (map[string]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, errors.WithStack(err)
	}
	defer f.Close()
	got := map[string]string{}
	s := bufio.NewScanner(f)
	for s.Scan() {
		sum, p, ok := strings.Cut(s.Text(), "  ")
		if !ok || len(sum) != 64 {
			return nil, errors.Errorf("%s: malformed line %q", path, s.Text())
		}
		got[p] = sum
	}
	return got, errors.Wrapf(s.Err(), "failed to read %s", path)
}
