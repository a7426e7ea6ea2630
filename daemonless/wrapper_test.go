// Package buildctldaemonless tests buildctl-daemonless.sh end to end: real
// builds through the script as root and, under RootlessKit, as an
// unprivileged user the test creates, plus exit status, signals, a daemon
// that fails to start, and that nothing of a run outlives it.
//
// The tests need root (to run buildkitd and to create the rootless user),
// the repository's bin/buildkitd and bin/buildctl (make build), and what
// hack/install-deps installs: runc, busybox-static, rootlesskit, uidmap. A
// missing one fails the test with what to install; nothing is skipped.
package buildctldaemonless

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/moby/buildkit/client/llb"
	"github.com/stretchr/testify/require"
)

const (
	wrapperName = "buildctl-daemonless.sh"
	// rootlessUser is created by TestRootless when missing, and kept so that
	// later and concurrent runs reuse it.
	rootlessUser = "bkdaemonless"
	// runTimeout bounds one wrapper run; builds here take about a second.
	runTimeout = 3 * time.Minute
	// stopTimeout bounds how long the wrapper may take to clean up after a
	// signal.
	stopTimeout = time.Minute
)

// tools are the programs every test runs.
type tools struct {
	repo      string
	wrapper   string
	buildkitd string
	buildctl  string
	busybox   string
}

func requireTools(t *testing.T) tools {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatalf("these tests run buildkitd and create a user: run them as root (sudo make test-wrapper)")
	}
	repo, err := filepath.Abs("..")
	require.NoError(t, err)
	tl := tools{
		repo:      repo,
		wrapper:   filepath.Join(repo, "daemonless", wrapperName),
		buildkitd: filepath.Join(repo, "bin", "buildkitd"),
		buildctl:  filepath.Join(repo, "bin", "buildctl"),
	}
	for _, p := range []string{tl.buildkitd, tl.buildctl} {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("%s missing: run make build first (%v)", p, err)
		}
	}
	for _, name := range []string{"runc", "busybox"} {
		p, err := exec.LookPath(name)
		if err != nil {
			t.Fatalf("%s not found in PATH: run hack/install-deps (installs runc, busybox-static)", name)
		}
		if name == "busybox" {
			tl.busybox = p
		}
	}
	return tl
}

// run is one invocation of the wrapper.
type run struct {
	cmd    *exec.Cmd
	stdout bytes.Buffer
	stderr bytes.Buffer
	// exited is closed once cmd.Wait has returned; only then may cmd's
	// ProcessState and the buffers be read.
	exited chan struct{}
}

// start runs argv (the wrapper, or a shell and the wrapper) with exactly env,
// in a process group of its own so that a test can send what Ctrl-C sends.
func start(t *testing.T, argv, env []string, stdin io.Reader, cred *syscall.Credential) *run {
	t.Helper()
	r := &run{cmd: exec.Command(argv[0], argv[1:]...), exited: make(chan struct{})}
	r.cmd.Env = env
	r.cmd.Stdin = stdin
	r.cmd.Stdout = &r.stdout
	r.cmd.Stderr = &r.stderr
	r.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: cred}
	require.NoError(t, r.cmd.Start())
	go func() {
		_ = r.cmd.Wait()
		close(r.exited)
	}()
	// Only if the test gave up on it: the wrapper, its buildctl and its
	// buildkitd share the group.
	t.Cleanup(r.kill)
	return r
}

func (r *run) kill() {
	select {
	case <-r.exited:
	default:
		_ = syscall.Kill(-r.cmd.Process.Pid, syscall.SIGKILL)
		<-r.exited
	}
}

// wait returns the wrapper's exit status; -1 means a signal killed it.
func (r *run) wait(t *testing.T) int {
	t.Helper()
	return r.waitWithin(t, runTimeout)
}

func (r *run) waitWithin(t *testing.T, d time.Duration) int {
	t.Helper()
	select {
	case <-r.exited:
	case <-time.After(d):
		r.kill()
		t.Fatalf("%s did not end within %s\nstderr:\n%s", wrapperName, d, r.stderr.String())
	}
	return r.cmd.ProcessState.ExitCode()
}

// workspace is the directories of one run: TMPDIR for the wrapper (so its
// temp dir, and nothing else, lands there), a build context and an output.
type workspace struct {
	tmp, ctx, out, home string
}

// newWorkspace makes the directories of one run under a short base (unix
// socket paths are limited, and t.TempDir's names are long); base "" means
// a new directory under os.TempDir(), removed when the test ends.
func newWorkspace(t *testing.T, base string) workspace {
	t.Helper()
	if base == "" {
		var err error
		base, err = os.MkdirTemp("", "bkdl-")
		require.NoError(t, err)
		t.Cleanup(func() { os.RemoveAll(base) })
	}
	ws := workspace{
		tmp:  filepath.Join(base, "tmp"),
		ctx:  filepath.Join(base, "ctx"),
		out:  filepath.Join(base, "out"),
		home: filepath.Join(base, "home"),
	}
	for _, d := range []string{ws.tmp, ws.ctx, ws.home} {
		require.NoError(t, os.MkdirAll(d, 0o755))
	}
	t.Cleanup(func() { scavenge(base) })
	return ws
}

// scavenge kills what a failed test left running and mounted under base, so
// that a failure does not leak daemons or build steps into later tests.
func scavenge(base string) {
	for _, p := range processesMentioning(base) {
		_ = syscall.Kill(p.pid, syscall.SIGKILL)
	}
	mounts := mountsUnder(base)
	for i := len(mounts) - 1; i >= 0; i-- {
		_ = syscall.Unmount(mounts[i], syscall.MNT_DETACH)
	}
}

func (tl tools) env(ws workspace, extra ...string) []string {
	return append([]string{
		"PATH=" + os.Getenv("PATH"),
		"HOME=" + ws.home,
		"TMPDIR=" + ws.tmp,
		"BUILDKITD=" + tl.buildkitd,
		"BUILDCTL=" + tl.buildctl,
	}, extra...)
}

// writeContext lays out a build context whose Dockerfile starts FROM scratch,
// copies hello and a static busybox in, and then has runLine.
func writeContext(t *testing.T, ws workspace, busybox, hello, runLine string) {
	t.Helper()
	src, err := os.ReadFile(busybox)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(ws.ctx, "busybox"), src, 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(ws.ctx, "hello"), []byte(hello), 0o644))
	dockerfile := "FROM scratch\nCOPY busybox /bin/busybox\nCOPY hello /hello\n" + runLine + "\n"
	require.NoError(t, os.WriteFile(filepath.Join(ws.ctx, "Dockerfile"), []byte(dockerfile), 0o644))
}

// shRun is a Dockerfile RUN line in exec form running script with BusyBox sh.
func shRun(script string) string {
	return fmt.Sprintf(`RUN ["/bin/busybox", "sh", "-c", %q]`, "PATH=/bin; /bin/busybox --install -s /bin; "+script)
}

func dockerfileBuild(ws workspace) []string {
	return []string{"build", "--progress=plain",
		"--frontend=dockerfile.v0",
		"--local", "context=" + ws.ctx, "--local", "dockerfile=" + ws.ctx,
		"--output", "type=local,dest=" + ws.out}
}

func readOut(t *testing.T, ws workspace, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(ws.out, name))
	require.NoError(t, err)
	return string(b)
}

// process is a running process as /proc shows it.
type process struct {
	pid     int
	cmdline string // arguments joined by spaces
}

func (p process) String() string { return fmt.Sprintf("%d: %s", p.pid, p.cmdline) }

// processesMentioning lists the processes whose command line contains s.
func processesMentioning(s string) []process {
	var found []process
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, d := range dirs {
		pid, err := strconv.Atoi(filepath.Base(d))
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join(d, "cmdline"))
		if err != nil || len(b) == 0 {
			continue
		}
		line := strings.TrimSpace(string(bytes.ReplaceAll(b, []byte{0}, []byte{' '})))
		if strings.Contains(line, s) {
			found = append(found, process{pid: pid, cmdline: line})
		}
	}
	return found
}

// sleepingStep is a RUN script that keeps a build busy. Its command line
// names the run's TMPDIR, so that processesMentioning(ws.tmp) finds the
// step too.
func sleepingStep(ws workspace) string {
	return "sleep 600; : " + ws.tmp
}

func mountsUnder(dir string) []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var found []string
	s := bufio.NewScanner(f)
	for s.Scan() {
		if fields := strings.Fields(s.Text()); len(fields) > 4 && strings.HasPrefix(fields[4], dir+"/") {
			found = append(found, fields[4])
		}
	}
	return found
}

// requireNothingLeft asserts that the run's temp dir is gone and that no
// process (buildkitd, rootlesskit, buildctl, a build step) or mount of it
// remains once the wrapper has exited.
func requireNothingLeft(t *testing.T, r *run, ws workspace) {
	t.Helper()
	entries, err := os.ReadDir(ws.tmp)
	require.NoError(t, err)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	require.Empty(t, processesMentioning(ws.tmp), "processes of the run still alive after the wrapper exited")
	require.Empty(t, names, "left in TMPDIR %s after the wrapper exited\nstderr:\n%s", ws.tmp, r.stderr.String())
	require.Empty(t, mountsUnder(ws.tmp), "mounts of the run left after the wrapper exited")
	require.NotContains(t, r.stderr.String(), "could not remove")
}

// TestBuild runs a Dockerfile build (COPY and a RUN step in runc) through the
// wrapper as root, started directly and by each shell it supports.
func TestBuild(t *testing.T) {
	tl := requireTools(t)
	for _, tc := range []struct {
		name  string
		shell []string
	}{
		{name: "shebang"},
		{name: "bash", shell: []string{"bash"}},
		{name: "busybox", shell: []string{tl.busybox, "sh"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ws := newWorkspace(t, "")
			hello := "hello from " + t.Name()
			writeContext(t, ws, tl.busybox, hello, shRun("id -u > /uid; cat /proc/self/uid_map > /uid_map; cat /hello > /copy"))
			argv := append(append(append([]string{}, tc.shell...), tl.wrapper), dockerfileBuild(ws)...)
			r := start(t, argv, tl.env(ws), nil, nil)
			require.Equal(t, 0, r.wait(t), "stderr:\n%s", r.stderr.String())

			require.Equal(t, hello, readOut(t, ws, "hello"))
			require.Equal(t, hello, readOut(t, ws, "copy"))
			require.Equal(t, "0\n", readOut(t, ws, "uid"))
			// as root the step runs in the initial user namespace
			require.Equal(t, []string{"0", "0", "4294967295"}, strings.Fields(readOut(t, ws, "uid_map")))
			requireNothingLeft(t, r, ws)
		})
	}
}

// TestParallelRuns starts two builds at once with the same TMPDIR: each
// must get a daemon of its own and its own result.
func TestParallelRuns(t *testing.T) {
	tl := requireTools(t)
	shared := newWorkspace(t, "")
	var runs []*run
	var spaces []workspace
	for i := range 2 {
		ws := newWorkspace(t, "")
		ws.tmp = shared.tmp
		writeContext(t, ws, tl.busybox, fmt.Sprintf("run %d", i), shRun("cat /hello > /copy"))
		runs = append(runs, start(t, append([]string{tl.wrapper}, dockerfileBuild(ws)...), tl.env(ws), nil, nil))
		spaces = append(spaces, ws)
	}
	for i, r := range runs {
		require.Equal(t, 0, r.wait(t), "run %d stderr:\n%s", i, r.stderr.String())
		require.Equal(t, fmt.Sprintf("run %d", i), readOut(t, spaces[i], "copy"))
	}
	requireNothingLeft(t, runs[0], shared)
}

// TestLLBOnStdin pipes an LLB definition to the wrapper, as
// `go run ... | buildctl-daemonless.sh build` does: buildctl must get the
// wrapper's stdin although it runs in the background.
func TestLLBOnStdin(t *testing.T) {
	tl := requireTools(t)
	ws := newWorkspace(t, "")
	greeting := "made by LLB in " + t.Name()
	def, err := llb.Scratch().File(llb.Mkfile("/greeting", 0o644, []byte(greeting))).Marshal(context.TODO())
	require.NoError(t, err)
	var stdin bytes.Buffer
	require.NoError(t, llb.WriteTo(def, &stdin))

	r := start(t, []string{tl.wrapper, "build", "--output", "type=local,dest=" + ws.out}, tl.env(ws), &stdin, nil)
	require.Equal(t, 0, r.wait(t), "stderr:\n%s", r.stderr.String())
	require.Equal(t, greeting, readOut(t, ws, "greeting"))
	requireNothingLeft(t, r, ws)
}

// TestExitStatus checks that buildctl's exit status and output are the
// wrapper's, and that a failed command leaves nothing behind either.
func TestExitStatus(t *testing.T) {
	tl := requireTools(t)
	version, err := exec.Command(tl.buildkitd, "--version").Output()
	require.NoError(t, err)
	for _, tc := range []struct {
		name       string
		args       []string
		wantStatus int
		wantStdout string
		wantStderr string
	}{
		{
			name:       "success",
			args:       []string{"debug", "info"},
			wantStatus: 0,
			// the daemon the wrapper started is ours
			wantStdout: strings.Fields(string(version))[2],
		},
		{
			name:       "failed build",
			args:       []string{"build", "--frontend=no-such-frontend"},
			wantStatus: 1,
			wantStderr: "invalid frontend: no-such-frontend",
		},
		{
			// buildctl's status for an unknown command is 3: not just 0 or 1
			// comes through.
			name:       "unknown command",
			args:       []string{"no-such-command"},
			wantStatus: 3,
			wantStderr: "No help topic for 'no-such-command'",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ws := newWorkspace(t, "")
			r := start(t, append([]string{tl.wrapper}, tc.args...), tl.env(ws), nil, nil)
			require.Equal(t, tc.wantStatus, r.wait(t), "stderr:\n%s", r.stderr.String())
			require.Contains(t, r.stdout.String(), tc.wantStdout)
			require.Contains(t, r.stderr.String(), tc.wantStderr)
			require.NotContains(t, r.stderr.String(), "buildkitd log", "the daemon's log is for a daemon that failed")
			requireNothingLeft(t, r, ws)
		})
	}
}

// TestSignal interrupts a build whose step sleeps and checks that the
// wrapper stops buildctl, the step and the daemon, waits for them and exits
// with 128+signal.
func TestSignal(t *testing.T) {
	tl := requireTools(t)
	for _, tc := range []struct {
		name  string
		shell []string
		sig   syscall.Signal
		group bool // to the whole process group, as Ctrl-C in a terminal
	}{
		{name: "ctrl-c", sig: syscall.SIGINT, group: true},
		{name: "sigint to the script", sig: syscall.SIGINT},
		{name: "sigterm to the script", sig: syscall.SIGTERM},
		{name: "sigterm to the script with bash", shell: []string{"bash"}, sig: syscall.SIGTERM},
		{name: "ctrl-c with busybox", shell: []string{tl.busybox, "sh"}, sig: syscall.SIGINT, group: true},
		{name: "sigterm to the script with busybox", shell: []string{tl.busybox, "sh"}, sig: syscall.SIGTERM},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ws := newWorkspace(t, "")
			writeContext(t, ws, tl.busybox, "hi", shRun(sleepingStep(ws)))
			argv := append(append(append([]string{}, tc.shell...), tl.wrapper), dockerfileBuild(ws)...)
			r := start(t, argv, tl.env(ws), nil, nil)

			step := waitForProcess(t, r, sleepingStep(ws))
			var daemon []process
			for _, p := range processesMentioning(ws.tmp) {
				if strings.Contains(p.cmdline, "buildkitd --addr=") {
					daemon = append(daemon, p)
				}
			}
			require.NotEmpty(t, daemon, "no buildkitd of this run while its step %s runs", step)

			pid := r.cmd.Process.Pid
			if tc.group {
				pid = -pid
			}
			require.NoError(t, syscall.Kill(pid, tc.sig))
			require.Equal(t, 128+int(tc.sig), r.waitWithin(t, stopTimeout), "stderr:\n%s", r.stderr.String())
			requireNothingLeft(t, r, ws)
		})
	}
}

// TestDaemonDies kills the daemon in the middle of a build: buildctl's
// failure comes through, the daemon's log is shown, and what the daemon had
// mounted and written under TMPDIR is removed. The step it ran is orphaned
// (runc does not stop a container whose buildkitd died) and is killed by the
// test, not by the wrapper.
func TestDaemonDies(t *testing.T) {
	tl := requireTools(t)
	ws := newWorkspace(t, "")
	writeContext(t, ws, tl.busybox, "hi", shRun(sleepingStep(ws)))
	r := start(t, append([]string{tl.wrapper}, dockerfileBuild(ws)...), tl.env(ws), nil, nil)
	waitForProcess(t, r, sleepingStep(ws))
	require.NotEmpty(t, mountsUnder(ws.tmp), "the running step has no mounts under TMPDIR")
	killed := 0
	for _, p := range processesMentioning(ws.tmp) {
		if strings.Contains(p.cmdline, "buildkitd --addr=") {
			require.NoError(t, syscall.Kill(p.pid, syscall.SIGKILL))
			killed++
		}
	}
	require.Equal(t, 1, killed, "buildkitd processes of this run")

	require.Equal(t, 1, r.waitWithin(t, stopTimeout), "stderr:\n%s", r.stderr.String())
	stderr := r.stderr.String()
	require.Contains(t, stderr, "buildkitd exited while buildctl ran")
	require.Contains(t, stderr, "running server on "+ws.tmp, "buildkitd's log")
	// The orphaned step may still hold files of the run's directory when
	// the wrapper cleans up (the script's known limit: it does not kill a
	// step container its dead daemon left), so the directory may stay; the
	// wrapper must then say so. Every other test asserts it is removed.
	entries, err := os.ReadDir(ws.tmp)
	require.NoError(t, err)
	if len(entries) > 0 {
		require.Contains(t, stderr, "could not remove "+ws.tmp, "left in TMPDIR without saying so\nstderr:\n%s", stderr)
	}
	require.Empty(t, mountsUnder(ws.tmp))
	var left []process
	for _, p := range processesMentioning(ws.tmp) {
		if !strings.Contains(p.cmdline, sleepingStep(ws)) {
			left = append(left, p)
		}
	}
	require.Empty(t, left, "processes of the run besides the orphaned step")
}

// waitForProcess waits until a process whose command line contains s runs,
// failing early when the wrapper ends first.
func waitForProcess(t *testing.T, r *run, s string) process {
	t.Helper()
	deadline := time.Now().Add(runTimeout)
	for time.Now().Before(deadline) {
		if found := processesMentioning(s); len(found) > 0 {
			return found[0]
		}
		select {
		case <-r.exited:
			t.Fatalf("%s ended before %q ran\nstderr:\n%s", wrapperName, s, r.stderr.String())
		case <-time.After(100 * time.Millisecond):
		}
	}
	t.Fatalf("%q did not run within %s\nstderr:\n%s", s, runTimeout, r.stderr.String())
	return process{}
}

// TestDaemonFailsToStart checks that a daemon that cannot start makes the
// wrapper fail at once, saying why.
func TestDaemonFailsToStart(t *testing.T) {
	tl := requireTools(t)
	for _, tc := range []struct {
		name       string
		env        func(ws *workspace) []string
		wantStderr []string
	}{
		{
			name: "bad BUILDKITD_FLAGS",
			env:  func(*workspace) []string { return []string{"BUILDKITD_FLAGS=--no-such-flag"} },
			wantStderr: []string{
				"buildkitd exited before it accepted connections",
				"========== buildkitd log ==========",
				"flag provided but not defined: -no-such-flag",
			},
		},
		{
			name: "TMPDIR too long for a socket",
			env: func(ws *workspace) []string {
				ws.tmp = filepath.Join(ws.tmp, strings.Repeat("x", 80))
				require.NoError(t, os.Mkdir(ws.tmp, 0o755))
				return nil
			},
			wantStderr: []string{"longer than the 104 bytes buildkitd accepts; set TMPDIR to a shorter directory"},
		},
		{
			// a daemon that neither answers nor stops on SIGTERM
			name: "daemon hangs",
			env: func(ws *workspace) []string {
				shim := filepath.Join(ws.home, "buildkitd")
				require.NoError(t, os.WriteFile(shim, []byte("#!/bin/sh\ntrap '' TERM\necho hanging daemon >&2\nwhile :; do sleep 1; done\n"), 0o755))
				return []string{"BUILDKITD=" + shim, "BUILDCTL_CONNECT_RETRIES_MAX=2", "BUILDKITD_STOP_TIMEOUT=1"}
			},
			wantStderr: []string{
				"buildkitd did not answer on unix://",
				"after 2 retries (BUILDCTL_CONNECT_RETRIES_MAX=2)",
				"hanging daemon",
				"buildkitd did not stop within 1s (BUILDKITD_STOP_TIMEOUT); killing it",
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ws := newWorkspace(t, "")
			extra := tc.env(&ws)
			r := start(t, []string{tl.wrapper, "debug", "workers"}, tl.env(ws, extra...), nil, nil)
			require.Equal(t, 1, r.wait(t), "stderr:\n%s", r.stderr.String())
			for _, want := range tc.wantStderr {
				require.Contains(t, r.stderr.String(), want)
			}
			requireNothingLeft(t, r, ws)
		})
	}
}

// TestInstall checks that make install puts the daemon, buildctl and the
// wrapper side by side in $(DESTDIR)$(PREFIX)/bin, where the wrapper finds the
// other two through PATH.
func TestInstall(t *testing.T) {
	tl := requireTools(t)
	destdir := t.TempDir()
	out, err := exec.Command("make", "-C", tl.repo, "install", "DESTDIR="+destdir, "PREFIX=/opt/lazylocal").CombinedOutput()
	require.NoError(t, err, "make install: %s", out)
	bindir := filepath.Join(destdir, "opt", "lazylocal", "bin")
	for src, name := range map[string]string{tl.buildkitd: "buildkitd", tl.buildctl: "buildctl", tl.wrapper: wrapperName} {
		fi, err := os.Stat(filepath.Join(bindir, name))
		require.NoError(t, err)
		require.Equal(t, os.FileMode(0o755), fi.Mode().Perm(), name)
		want, err := os.ReadFile(src)
		require.NoError(t, err)
		got, err := os.ReadFile(filepath.Join(bindir, name))
		require.NoError(t, err)
		require.True(t, bytes.Equal(want, got), "%s differs from %s", name, src)
	}

	// installed, the wrapper needs no BUILDCTL or BUILDKITD
	ws := newWorkspace(t, "")
	env := []string{"PATH=" + bindir + ":" + os.Getenv("PATH"), "HOME=" + ws.home, "TMPDIR=" + ws.tmp}
	r := start(t, []string{filepath.Join(bindir, wrapperName), "debug", "workers"}, env, nil, nil)
	require.Equal(t, 0, r.wait(t), "stderr:\n%s", r.stderr.String())
	require.Contains(t, r.stdout.String(), "PLATFORMS")
	requireNothingLeft(t, r, ws)
}

// TestRootless runs a build through the wrapper as an unprivileged user, so
// under RootlessKit, and checks the step ran as root of a user namespace that
// maps that user. The step leaves a directory owned by a subordinate UID in
// the daemon's state, which the user cannot delete outside the namespace.
func TestRootless(t *testing.T) {
	tl := requireTools(t)
	for _, name := range []string{"rootlesskit", "newuidmap", "newgidmap"} {
		if _, err := exec.LookPath(name); err != nil {
			t.Fatalf("%s not found in PATH: rootless buildkitd needs rootlesskit and uidmap; run hack/install-deps (apt-get install rootlesskit uidmap)", name)
		}
	}
	u := ensureRootlessUser(t)
	uid, err := strconv.Atoi(u.Uid)
	require.NoError(t, err)
	gid, err := strconv.Atoi(u.Gid)
	require.NoError(t, err)
	cred := &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}

	// Trees the user owns, under a directory every user can search; the
	// repository may not be (e.g. under /root), so the binaries are copied.
	base, err := os.MkdirTemp("", "bkdl-rootless-")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(base) })
	requireSearchable(t, base)
	userTools := tl
	for _, p := range []*string{&userTools.buildkitd, &userTools.buildctl, &userTools.wrapper} {
		dst := filepath.Join(base, "bin", filepath.Base(*p))
		copyFile(t, *p, dst)
		*p = dst
	}
	chownTree(t, base, uid, gid)
	// userWorkspace makes a workspace the user owns; step, when set, gives
	// the script of the build's RUN step.
	userWorkspace := func(t *testing.T, step func(ws workspace) string) (workspace, []string) {
		dir := filepath.Join(base, strings.ReplaceAll(filepath.Base(t.Name()), "_", ""))
		ws := newWorkspace(t, dir)
		if step != nil {
			writeContext(t, ws, tl.busybox, "hello from "+u.Username, shRun(step(ws)))
		}
		chownTree(t, dir, uid, gid)
		return ws, userTools.env(ws, "USER="+u.Username, "LOGNAME="+u.Username)
	}
	failRootless := func(t *testing.T, r *run, status int) {
		t.Fatalf("rootless run as %s (uid %d) failed with status %d\nstderr:\n%s\n%s",
			u.Username, uid, status, r.stderr.String(), rootlessDiagnostics(u.Username))
	}

	t.Run("build", func(t *testing.T) {
		ws, env := userWorkspace(t, func(workspace) string {
			return "id -u > /uid; cat /proc/self/uid_map > /uid_map; cat /hello > /copy; " +
				"mkdir -p /owned/deep && echo x > /owned/deep/file && chown -R 1234:1234 /owned"
		})
		r := start(t, append([]string{userTools.wrapper}, dockerfileBuild(ws)...), env, nil, cred)
		if status := r.wait(t); status != 0 {
			failRootless(t, r, status)
		}
		require.Equal(t, "hello from "+u.Username, readOut(t, ws, "copy"))
		require.Equal(t, "0\n", readOut(t, ws, "uid"))
		// root in the step is the user outside: RootlessKit's namespace
		uidMap := strings.Fields(readOut(t, ws, "uid_map"))
		require.GreaterOrEqual(t, len(uidMap), 3, "uid_map: %v", uidMap)
		require.Equal(t, []string{"0", u.Uid, "1"}, uidMap[:3])
		requireNothingLeft(t, r, ws)
	})

	t.Run("ctrl-c", func(t *testing.T) {
		ws, env := userWorkspace(t, sleepingStep)
		r := start(t, append([]string{userTools.wrapper}, dockerfileBuild(ws)...), env, nil, cred)
		waitForProcess(t, r, sleepingStep(ws))
		var rootlesskit bool
		for _, p := range processesMentioning(ws.tmp) {
			rootlesskit = rootlesskit || strings.HasPrefix(p.cmdline, "rootlesskit ")
		}
		require.True(t, rootlesskit, "no rootlesskit of this run while its step runs")
		require.NoError(t, syscall.Kill(-r.cmd.Process.Pid, syscall.SIGINT))
		require.Equal(t, 130, r.waitWithin(t, stopTimeout), "stderr:\n%s", r.stderr.String())
		requireNothingLeft(t, r, ws)
	})

	t.Run("no rootlesskit", func(t *testing.T) {
		ws, env := userWorkspace(t, nil)
		r := start(t, []string{userTools.wrapper, "debug", "workers"},
			append(env, "ROOTLESSKIT=/nonexistent/rootlesskit"), nil, cred)
		require.Equal(t, 127, r.wait(t), "stderr:\n%s", r.stderr.String())
		require.Contains(t, r.stderr.String(), "/nonexistent/rootlesskit not found (from ROOTLESSKIT)")
		require.Contains(t, r.stderr.String(), "install rootlesskit and uidmap")
		requireNothingLeft(t, r, ws)
	})
}

// ensureRootlessUser creates rootlessUser with subordinate ID ranges when
// missing. It stays: tests running at the same time may be using it.
func ensureRootlessUser(t *testing.T) *user.User {
	t.Helper()
	if _, err := user.Lookup(rootlessUser); err != nil {
		out, err := exec.Command("useradd", "--no-create-home", "--home-dir", "/nonexistent",
			"--shell", "/usr/sbin/nologin", "--comment", "buildctl-daemonless.sh rootless test", rootlessUser).CombinedOutput()
		// Another run may have created it meanwhile: look it up again.
		if _, lookErr := user.Lookup(rootlessUser); lookErr != nil {
			t.Fatalf("useradd %s: %v: %s", rootlessUser, err, out)
		}
	}
	u, err := user.Lookup(rootlessUser)
	require.NoError(t, err)
	for _, f := range []struct{ file, flag string }{
		{"/etc/subuid", "--add-subuids"},
		{"/etc/subgid", "--add-subgids"},
	} {
		if hasSubIDs(f.file, u) {
			continue
		}
		// usermod adds to the file but does not create it
		if _, err := os.Stat(f.file); os.IsNotExist(err) {
			require.NoError(t, os.WriteFile(f.file, nil, 0o644))
		}
		first := nextFreeSubID(f.file)
		out, err := exec.Command("usermod", f.flag, fmt.Sprintf("%d-%d", first, first+65535), rootlessUser).CombinedOutput()
		require.NoError(t, err, "usermod %s: %s", f.flag, out)
		require.True(t, hasSubIDs(f.file, u), "%s still has no range for %s", f.file, rootlessUser)
	}
	return u
}

func hasSubIDs(file string, u *user.User) bool {
	b, err := os.ReadFile(file)
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, u.Username+":") || strings.HasPrefix(line, u.Uid+":") {
			return true
		}
	}
	return false
}

// nextFreeSubID is the first ID after every range in file, at least 100000.
func nextFreeSubID(file string) int {
	next := 100000
	b, _ := os.ReadFile(file)
	for _, line := range strings.Split(string(b), "\n") {
		parts := strings.Split(line, ":")
		if len(parts) != 3 {
			continue
		}
		start, err1 := strconv.Atoi(parts[1])
		count, err2 := strconv.Atoi(parts[2])
		if err1 == nil && err2 == nil && start+count > next {
			next = start + count
		}
	}
	return next
}

// rootlessDiagnostics collects what decides whether an unprivileged user may
// create user namespaces here, for the failure message.
func rootlessDiagnostics(name string) string {
	var b strings.Builder
	b.WriteString("rootless prerequisites on this machine:\n")
	for _, f := range []string{
		"/proc/sys/user/max_user_namespaces",
		"/proc/sys/kernel/unprivileged_userns_clone",
		"/proc/sys/kernel/apparmor_restrict_unprivileged_userns",
	} {
		v, err := os.ReadFile(f)
		if os.IsNotExist(err) {
			fmt.Fprintf(&b, "  %s: absent (this kernel has no such switch)\n", f)
			continue
		} else if err != nil {
			fmt.Fprintf(&b, "  %s: %v\n", f, err)
			continue
		}
		fmt.Fprintf(&b, "  %s = %s\n", f, strings.TrimSpace(string(v)))
	}
	for _, prog := range []string{"newuidmap", "newgidmap"} {
		p, err := exec.LookPath(prog)
		if err != nil {
			fmt.Fprintf(&b, "  %s: %v\n", prog, err)
			continue
		}
		if fi, err := os.Stat(p); err == nil {
			owner := -1
			if st, ok := fi.Sys().(*syscall.Stat_t); ok {
				owner = int(st.Uid)
			}
			fmt.Fprintf(&b, "  %s: mode %s, owner uid %d, setuid %v (needs setuid root)\n",
				p, fi.Mode(), owner, fi.Mode()&os.ModeSetuid != 0)
		}
	}
	for _, f := range []string{"/etc/subuid", "/etc/subgid"} {
		b2, _ := os.ReadFile(f)
		var lines []string
		for _, l := range strings.Split(string(b2), "\n") {
			if strings.HasPrefix(l, name+":") {
				lines = append(lines, l)
			}
		}
		fmt.Fprintf(&b, "  %s: %q\n", f, lines)
	}
	return b.String()
}

func requireSearchable(t *testing.T, dir string) {
	t.Helper()
	for d := filepath.Dir(dir); ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		require.NoError(t, err)
		if fi.Mode().Perm()&0o001 == 0 {
			t.Fatalf("%s is not searchable by other users, so %s cannot reach its files; set TMPDIR to a directory such as /tmp", d, rootlessUser)
		}
		if d == "/" {
			return
		}
	}
}

func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	require.NoError(t, os.MkdirAll(filepath.Dir(dst), 0o755))
	in, err := os.Open(src)
	require.NoError(t, err)
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	require.NoError(t, err)
	_, err = io.Copy(out, in)
	require.NoError(t, err)
	require.NoError(t, out.Close())
}

func chownTree(t *testing.T, root string, uid, gid int) {
	t.Helper()
	require.NoError(t, filepath.Walk(root, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, uid, gid)
	}))
}
