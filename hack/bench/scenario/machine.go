package scenario

import (
	"bufio"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
)

// Machine describes where a benchmark ran.
type Machine struct {
	Cores       int
	CPU         string
	MemoryGiB   float64
	Kernel      string
	Snapshotter string
	Buildkitd   string
	LoadAvg     string
}

// DescribeMachine reads what /proc and uname say; the snapshotter is
// filled in by the caller from a running daemon.
func DescribeMachine(tools Tools) Machine {
	m := Machine{Cores: runtime.NumCPU(), LoadAvg: LoadAvg()}
	var u syscall.Utsname
	if syscall.Uname(&u) == nil {
		m.Kernel = utsString(u.Release[:])
	}
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		s := bufio.NewScanner(f)
		for s.Scan() {
			if k, v, ok := strings.Cut(s.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
		f.Close()
	}
	if f, err := os.Open("/proc/meminfo"); err == nil {
		s := bufio.NewScanner(f)
		for s.Scan() {
			var kb float64
			if n, _ := sscanKB(s.Text(), "MemTotal:", &kb); n {
				m.MemoryGiB = kb / (1 << 20)
				break
			}
		}
		f.Close()
	}
	if out, err := exec.Command(tools.Buildkitd, "--version").Output(); err == nil {
		m.Buildkitd = strings.TrimSpace(string(out))
	}
	return m
}

// LoadAvg is the first three fields of /proc/loadavg.
func LoadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

func sscanKB(line, prefix string, kb *float64) (bool, error) {
	v, ok := strings.CutPrefix(line, prefix)
	if !ok {
		return false, nil
	}
	var x float64
	for _, r := range strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")) {
		if r < '0' || r > '9' {
			return false, nil
		}
		x = x*10 + float64(r-'0')
	}
	*kb = x
	return true, nil
}

func utsString(b []int8) string {
	var sb strings.Builder
	for _, c := range b {
		if c == 0 {
			break
		}
		sb.WriteByte(byte(c))
	}
	return sb.String()
}
