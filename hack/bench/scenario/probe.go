package scenario

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/pkg/errors"
)

// Decompressors are the programs containerd decompresses gzip layers with,
// in the order it tries them (pkg/archive/compression: igzip, then unpigz,
// then its own Go code), and the environment variables that make it skip
// each.
var Decompressors = []struct {
	Name, Disable string
}{
	{Name: "igzip", Disable: "CONTAINERD_DISABLE_IGZIP"},
	{Name: "unpigz", Disable: "CONTAINERD_DISABLE_PIGZ"},
}

// GunzipEnv is the environment that makes buildkitd decompress gzip layers
// with the named decompressor: igzip, unpigz, or go (containerd's
// in-process code).
func GunzipEnv(name string) ([]string, error) {
	var env []string
	for _, d := range Decompressors {
		if d.Name == name {
			return env, nil
		}
		env = append(env, d.Disable+"=1")
	}
	if name == "go" {
		return env, nil
	}
	return nil, errors.Errorf("unknown gzip decompressor %q (want igzip, unpigz or go)", name)
}

// decompressorShim stands in for a decompressor on buildkitd's PATH: it
// runs the real one as its child, with the same arguments, stdin and
// stdout, and records when it ran and the CPU time the child used (the
// shell's times builtin), one file per run under $SCENARIO_DECOMPRESSORS.
const decompressorShim = `#!/bin/sh
# Written by hack/bench/scenario: runs %[1]s, recording its time and CPU.
[ -n "${SCENARIO_DECOMPRESSORS:-}" ] || exec %[1]s "$@"
start=$(date +%%s%%N)
rc=0
%[1]s "$@" || rc=$?
log=$SCENARIO_DECOMPRESSORS/%[2]s.$$
echo "%[2]s $start $(date +%%s%%N) $rc" >"$log"
times >>"$log"
exit "$rc"
`

// WriteDecompressorShims writes dir/NAME for each decompressor in real
// (name -> the real program's absolute path, as the daemon sees it).
func WriteDecompressorShims(dir string, real map[string]string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return errors.WithStack(err)
	}
	for name, path := range real {
		if !filepath.IsAbs(path) || strings.ContainsAny(path, " \t\n'\"$`\\") {
			return errors.Errorf("decompressor %s: want a plain absolute path, got %q", name, path)
		}
		shim := fmt.Sprintf(decompressorShim, path, name)
		if err := os.WriteFile(filepath.Join(dir, name), []byte(shim), 0o755); err != nil {
			return errors.WithStack(err)
		}
	}
	return nil
}

// DecompressorRun is one run of a decompressor through its shim.
type DecompressorRun struct {
	Tool       string
	Start, End time.Time
	ExitCode   int
	// CPU is the user+system time of the real decompressor.
	CPU time.Duration
}

// timesRe matches one figure of the times builtin: 0m1.230000s (dash,
// BusyBox) or 0m1.230s (bash).
var timesRe = regexp.MustCompile(`(\d+)m(\d+(?:\.\d+)?)s`)

func parseTimesFigure(s string) (time.Duration, error) {
	m := timesRe.FindStringSubmatch(s)
	if m == nil || m[0] != s {
		return 0, errors.Errorf("malformed times figure %q", s)
	}
	mins, _ := strconv.ParseInt(m[1], 10, 64)
	secs, _ := strconv.ParseFloat(m[2], 64)
	return time.Duration(mins)*time.Minute + time.Duration(secs*float64(time.Second)), nil
}

// parseDecompressorRun reads one shim record: "tool start end rc", then
// the two lines of times (the shell's own, then its children's).
func parseDecompressorRun(b string) (DecompressorRun, error) {
	var lines []string
	s := bufio.NewScanner(strings.NewReader(b))
	for s.Scan() {
		if l := strings.TrimSpace(s.Text()); l != "" {
			lines = append(lines, l)
		}
	}
	if len(lines) != 3 {
		return DecompressorRun{}, errors.Errorf("malformed decompressor record %q: want 3 lines", b)
	}
	f := strings.Fields(lines[0])
	if len(f) != 4 {
		return DecompressorRun{}, errors.Errorf("malformed decompressor record line %q", lines[0])
	}
	var n [3]int64
	for i := range n {
		v, err := strconv.ParseInt(f[i+1], 10, 64)
		if err != nil {
			return DecompressorRun{}, errors.Errorf("malformed decompressor record line %q", lines[0])
		}
		n[i] = v
	}
	r := DecompressorRun{Tool: f[0], Start: time.Unix(0, n[0]), End: time.Unix(0, n[1]), ExitCode: int(n[2])}
	c := strings.Fields(lines[2])
	if len(c) != 2 {
		return DecompressorRun{}, errors.Errorf("malformed times line %q", lines[2])
	}
	for _, fig := range c {
		d, err := parseTimesFigure(fig)
		if err != nil {
			return DecompressorRun{}, err
		}
		r.CPU += d
	}
	return r, nil
}

// ReadDecompressorRuns reads every record the shims wrote to dir, in the
// order the runs started.
func ReadDecompressorRuns(dir string) ([]DecompressorRun, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		if os.IsNotExist(err) {
			return nil, nil
		}
		return nil, errors.WithStack(err)
	}
	var out []DecompressorRun
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			return nil, errors.WithStack(err)
		}
		r, err := parseDecompressorRun(string(b))
		if err != nil {
			return nil, errors.Wrapf(err, "%s", filepath.Join(dir, e.Name()))
		}
		out = append(out, r)
	}
	slices.SortFunc(out, func(a, b DecompressorRun) int { return a.Start.Compare(b.Start) })
	return out, nil
}
