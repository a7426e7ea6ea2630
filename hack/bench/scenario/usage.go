package scenario

import (
	"bufio"
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/pkg/errors"
)

// clockTick is the unit of the CPU times in /proc/PID/stat (USER_HZ, 100
// on every Linux architecture Go supports).
const clockTick = 10 * time.Millisecond

// Usage is what the kernel counted for one buildkitd process, read from
// /proc while it ran; the last reading before it exited is kept.
type Usage struct {
	// CPU is the daemon's own user+system time: every goroutine,
	// in-process decompression included.
	CPU time.Duration
	// SysCPU is the part of CPU spent in the kernel (system calls: the
	// files a layer holds being created and written, pipes, mounts).
	SysCPU time.Duration
	// ChildCPU is the user+system time of the children it started and
	// waited for (decompressors such as igzip or unpigz, runc and the
	// steps runc ran), as wait4 hands it on.
	ChildCPU time.Duration
	// ReadBytes and WriteBytes are /proc/PID/io read_bytes and
	// write_bytes: bytes the daemon and its waited-for children caused to
	// be read from or sent to the storage layer (writes counted when the
	// page is dirtied, not when it reaches the disk).
	ReadBytes  int64
	WriteBytes int64
	// Samples counts the readings; 0 means the daemon was never found.
	Samples int
}

// parseStat reads the process's own CPU time (utime+stime), the system part
// of it (stime) and its waited-for children's (cutime+cstime) from the text
// of /proc/PID/stat. The command name (field 2) may hold spaces and
// parentheses, so fields are counted from the last ')'.
func parseStat(b []byte) (own, sys, children time.Duration, err error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, 0, errors.Errorf("malformed /proc stat %q", b)
	}
	// after ')': state(3) ppid(4) ... utime(14) stime(15) cutime(16) cstime(17)
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 15 {
		return 0, 0, 0, errors.Errorf("malformed /proc stat %q", b)
	}
	var v [4]int64
	for k := range v {
		if v[k], err = strconv.ParseInt(f[11+k], 10, 64); err != nil {
			return 0, 0, 0, errors.Wrapf(err, "malformed /proc stat field %d %q", 14+k, f[11+k])
		}
	}
	return time.Duration(v[0]+v[1]) * clockTick, time.Duration(v[1]) * clockTick, time.Duration(v[2]+v[3]) * clockTick, nil
}

// parseIO reads read_bytes and write_bytes from the text of /proc/PID/io.
func parseIO(b []byte) (read, write int64, err error) {
	found := 0
	s := bufio.NewScanner(bytes.NewReader(b))
	for s.Scan() {
		k, v, ok := strings.Cut(s.Text(), ":")
		if !ok {
			continue
		}
		var dst *int64
		switch k {
		case "read_bytes":
			dst = &read
		case "write_bytes":
			dst = &write
		default:
			continue
		}
		if *dst, err = strconv.ParseInt(strings.TrimSpace(v), 10, 64); err != nil {
			return 0, 0, errors.Wrapf(err, "malformed /proc io line %q", s.Text())
		}
		found++
	}
	if found != 2 {
		return 0, 0, errors.Errorf("no read_bytes and write_bytes in /proc io %q", b)
	}
	return read, write, nil
}

// readUsage reads one process's counters.
func readUsage(pid int) (Usage, bool) {
	dir := filepath.Join("/proc", strconv.Itoa(pid))
	st, err := os.ReadFile(filepath.Join(dir, "stat"))
	if err != nil {
		return Usage{}, false
	}
	own, sys, children, err := parseStat(st)
	if err != nil {
		return Usage{}, false
	}
	u := Usage{CPU: own, SysCPU: sys, ChildCPU: children}
	if io, err := os.ReadFile(filepath.Join(dir, "io")); err == nil {
		u.ReadBytes, u.WriteBytes, _ = parseIO(io)
	}
	return u, true
}

// parentPid reads a process's parent from /proc/PID/stat, 0 if it is gone.
func parentPid(pid int) int {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return 0
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 2 {
		return 0
	}
	p, _ := strconv.Atoi(f[1])
	return p
}

// FindDescendant returns the pid of a process named name (its first
// argument's base name) that descends from ancestor, or 0. It finds the
// buildkitd that a wrapper started inside a container, whose pid the host
// only learns from /proc.
func FindDescendant(ancestor int, name string) int {
	return findProcess(name, func(pid int, _ []string) bool {
		for p, n := pid, 0; p > 1 && n < 64; p, n = parentPid(p), n+1 {
			if p == ancestor {
				return true
			}
		}
		return false
	})
}
