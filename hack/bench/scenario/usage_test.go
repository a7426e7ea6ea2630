package scenario

import (
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestParseStat(t *testing.T) {
	// a command name with a space and a parenthesis, as a process may
	// call itself; utime 250, stime 50, cutime 1000, cstime 20 ticks
	st := "4242 (build kit) d) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 1000 20 20 0 12 0 1000 100000 2000\n"
	own, sys, children, err := parseStat([]byte(st))
	require.NoError(t, err)
	require.Equal(t, 3*time.Second, own)
	require.Equal(t, 500*time.Millisecond, sys)
	require.Equal(t, 10200*time.Millisecond, children)

	_, _, _, err = parseStat([]byte("4242 (x) S 1 2"))
	require.ErrorContains(t, err, "malformed /proc stat")
	_, _, _, err = parseStat([]byte("no parenthesis"))
	require.ErrorContains(t, err, "malformed /proc stat")
}

func TestParseIO(t *testing.T) {
	io := "rchar: 100\nwchar: 200\nsyscr: 3\nsyscw: 4\nread_bytes: 4096\nwrite_bytes: 1638400\ncancelled_write_bytes: 0\n"
	r, w, err := parseIO([]byte(io))
	require.NoError(t, err)
	require.Equal(t, int64(4096), r)
	require.Equal(t, int64(1638400), w)
	_, _, err = parseIO([]byte("rchar: 1\n"))
	require.ErrorContains(t, err, "no read_bytes and write_bytes")
	_, _, err = parseIO([]byte("read_bytes: x\nwrite_bytes: 1\n"))
	require.ErrorContains(t, err, "malformed /proc io line")
}

// The counters of this very process can be read, and a child it started
// is found as its descendant by name.
func TestReadUsageAndFindDescendant(t *testing.T) {
	u, ok := readUsage(os.Getpid())
	require.True(t, ok)
	require.GreaterOrEqual(t, u.CPU, time.Duration(0))
	_, ok = readUsage(1 << 30)
	require.False(t, ok)
	require.Equal(t, os.Getppid(), parentPid(os.Getpid()))
	require.Zero(t, FindDescendant(os.Getpid(), "no-such-program-here"))

	// a grandchild: sh starts sleep
	cmd := exec.Command("sh", "-c", "sleep 30; :")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { _ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); _ = cmd.Wait() })
	var pid int
	for range 100 {
		if pid = FindDescendant(os.Getpid(), "sleep"); pid != 0 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	require.NotZero(t, pid)
	require.Equal(t, cmd.Process.Pid, parentPid(pid))
	require.Zero(t, FindDescendant(cmd.Process.Pid+1<<20, "sleep"), "not a descendant of some other pid")
}
