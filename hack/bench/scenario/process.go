package scenario

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// stopGroup ends a process this package started in its own process group
// (and whatever it started in that group): SIGTERM, then SIGKILL after
// grace. done receives cmd.Wait's result.
func stopGroup(cmd *exec.Cmd, done chan error, grace time.Duration) {
	if cmd == nil || cmd.Process == nil {
		return
	}
	pgid := cmd.Process.Pid
	_ = syscall.Kill(-pgid, syscall.SIGTERM)
	select {
	case err := <-done:
		done <- err // keep it readable for a second Stop
	case <-time.After(grace):
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		err := <-done
		done <- err
	}
}

// tail returns the last n bytes of a file, for error messages.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "(" + err.Error() + ")"
	}
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(bytes.TrimSpace(b))
}

// findDaemon returns the pid of a buildkitd whose command line names root
// as its --root, or 0. The root directory is unique to one build, so this
// finds the daemon a wrapper started without knowing the wrapper's pid.
func findDaemon(root string) int {
	return findProcess("buildkitd", func(pid int, args []string) bool {
		for i, a := range args {
			if a == "--root="+root || (a == "--root" && i+1 < len(args) && args[i+1] == root) {
				return true
			}
		}
		return false
	})
}

// findProcess returns the pid of the first process named name (the base
// name of its first argument) for which match holds, or 0.
func findProcess(name string, match func(pid int, args []string) bool) int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return 0
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || len(b) == 0 {
			continue
		}
		args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
		if filepath.Base(args[0]) == name && match(pid, args) {
			return pid
		}
	}
	return 0
}

// vmHWM reads a process's peak resident set size in bytes.
func vmHWM(pid int) (int64, bool) {
	f, err := os.Open(filepath.Join("/proc", strconv.Itoa(pid), "status"))
	if err != nil {
		return 0, false
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if v, ok := strings.CutPrefix(s.Text(), "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				return 0, false
			}
			return kb * 1024, true
		}
	}
	return 0, false
}

// resetHWM resets a process's peak RSS to its current RSS, so a
// long-running daemon's peak can be read per build (proc(5) clear_refs).
func resetHWM(pid int) error {
	return os.WriteFile(filepath.Join("/proc", strconv.Itoa(pid), "clear_refs"), []byte("5"), 0)
}

// rssWatcher samples the peak RSS of the buildkitd serving root until
// stopped; VmHWM only grows, so the last sample is the peak up to then.
// It also keeps the daemon's last CPU and I/O counters (Usage).
type rssWatcher struct {
	stop chan struct{}
	done chan watched
}

type watched struct {
	peak  int64
	usage Usage
}

func watchRSS(root string, pid int) *rssWatcher {
	return watchProcess(func() int {
		if root != "" {
			return findDaemon(root)
		}
		return pid
	})
}

// watchProcess samples the process find returns, every 50 ms, finding it
// again whenever it is gone (0: not there yet).
func watchProcess(find func() int) *rssWatcher {
	w := &rssWatcher{stop: make(chan struct{}), done: make(chan watched, 1)}
	go func() {
		var (
			res watched
			pid int
		)
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			if pid == 0 {
				pid = find()
			}
			if pid != 0 {
				if v, ok := vmHWM(pid); ok {
					res.peak = max(res.peak, v)
					if u, ok := readUsage(pid); ok {
						u.Samples = res.usage.Samples + 1
						res.usage = u
					}
				} else {
					pid = 0 // exited; a wrapper may not start another, but look
				}
			}
			select {
			case <-w.stop:
				w.done <- res
				return
			case <-t.C:
			}
		}
	}()
	return w
}

// Peak stops sampling and returns the highest VmHWM seen (0 if the daemon
// was never found).
func (w *rssWatcher) Peak() int64 {
	p, _ := w.Stop()
	return p
}

// Stop stops sampling and returns the highest VmHWM seen and the last
// counters read (zero if the daemon was never found).
func (w *rssWatcher) Stop() (int64, Usage) {
	close(w.stop)
	r := <-w.done
	return r.peak, r.usage
}
