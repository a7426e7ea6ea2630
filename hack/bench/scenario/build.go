package scenario

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/pkg/errors"
)

// Result is what one build measured.
type Result struct {
	// Build is the wall time of `buildctl build` alone.
	Build time.Duration
	// Total is the wall time of the whole invocation: for a daemonless
	// build that includes starting and stopping buildkitd.
	Total time.Duration
	// Extract counts "extracting sha256:" in the plain progress output.
	Extract Extractions
	// RootBytes is the apparent size of the daemon's --root after a
	// daemonless build (it starts empty), or its growth during a build on
	// a warm daemon.
	RootBytes int64
	// PeakRSS is buildkitd's VmHWM over the build, 0 if never sampled.
	PeakRSS int64
	// Log is the file holding buildctl's output.
	Log string
	// HashFloor is the time to sha256 every file the build exported to a
	// new cache directory, read back from disk right after it; HashBytes
	// is their size. Zero unless measured.
	HashFloor time.Duration
	HashBytes int64
	// Usage is what the kernel counted for the build's buildkitd, read
	// from /proc while it ran (zero when it was never found).
	Usage Usage
	// BuildStart and BuildEnd are when the shim saw buildctl build start
	// and end (the last build, if the wrapper ran several), on this
	// machine's clock, the one the daemon's progress timestamps use; zero
	// when the build did not go through the shim.
	BuildStart, BuildEnd time.Time
	// CPUTotal is the user+system time of the wrapper and every process
	// it waited for (buildctl, buildkitd and what buildkitd waited for);
	// zero when the build did not go through the wrapper.
	CPUTotal time.Duration
}

// Daemonless runs each build as CI does: a fresh buildkitd whose state
// lives in a --root the caller owns and that exits after the build. It
// goes through buildctl-daemonless.sh when Tools.Wrapper is set, and
// through an internal starter with the same contract otherwise.
type Daemonless struct {
	Tools  Tools
	Config string // buildkitd.toml, passed in BUILDKITD_FLAGS
	// RunDir holds the buildctl shim and, for the internal starter,
	// sockets. Paths must not contain spaces: the wrapper splits
	// BUILDKITD_FLAGS on them.
	RunDir string
	// Env is added to the environment of the wrapper, and so of
	// buildkitd (PATH, CONTAINERD_DISABLE_IGZIP, ...).
	Env []string
	// Flags are more buildkitd flags (--debugaddr=...), after ours; they
	// must not contain blanks.
	Flags []string
}

// shim records how long the build itself takes inside the wrapper, which
// otherwise only lets us time daemon start, build and stop together.
const shim = `#!/bin/sh
# Written by hack/bench/scenario: times "buildctl ... build ..." for the benchmark.
set -eu
for a in "$@"; do
	if [ "$a" = build ]; then
		start=$(date +%s%N)
		rc=0
		"$SCENARIO_BUILDCTL" "$@" || rc=$?
		echo "$start $(date +%s%N)" >>"$SCENARIO_TIMES"
		exit "$rc"
	fi
done
exec "$SCENARIO_BUILDCTL" "$@"
`

// Mode names how builds reach a daemon, for reports.
func (d *Daemonless) Mode() string {
	if d.Tools.Wrapper != "" {
		return "buildctl-daemonless.sh (" + d.Tools.Wrapper + ")"
	}
	return "internal starter (" + WrapperPath + " not found)"
}

// Build runs buildctl with args against a fresh daemon whose --root is
// root (created empty if missing), writing buildctl's output to logPath.
func (d *Daemonless) Build(ctx context.Context, root string, args []string, logPath string) (Result, error) {
	if strings.ContainsAny(root+d.Config+strings.Join(d.Flags, ""), " \t\n") {
		return Result{}, errors.Errorf("daemon paths and flags must not contain spaces: %q, %q, %q", root, d.Config, d.Flags)
	}
	if err := os.MkdirAll(root, 0o700); err != nil {
		return Result{}, errors.WithStack(err)
	}
	var (
		res Result
		err error
	)
	if d.Tools.Wrapper != "" {
		res, err = d.viaWrapper(ctx, root, args, logPath)
	} else {
		res, err = d.viaStarter(ctx, root, args, logPath)
	}
	if err != nil {
		return res, err
	}
	return res, finish(&res, root, logPath, 0)
}

func (d *Daemonless) viaWrapper(ctx context.Context, root string, args []string, logPath string) (Result, error) {
	shimPath := filepath.Join(d.RunDir, "buildctl-timed")
	if _, err := os.Stat(shimPath); err != nil {
		if err := os.WriteFile(shimPath, []byte(shim), 0o755); err != nil {
			return Result{}, errors.WithStack(err)
		}
	}
	times := logPath + ".times"
	_ = os.Remove(times)
	logf, err := os.Create(logPath)
	if err != nil {
		return Result{}, errors.WithStack(err)
	}
	defer logf.Close()

	cmd := exec.Command(d.Tools.Wrapper, args...)
	cmd.Env = append(append(os.Environ(), d.Env...),
		"BUILDCTL="+shimPath,
		"BUILDKITD="+d.Tools.Buildkitd,
		"BUILDKITD_FLAGS="+strings.Join(append([]string{"--root=" + root, "--config=" + d.Config}, d.Flags...), " "),
		"SCENARIO_BUILDCTL="+d.Tools.Buildctl,
		"SCENARIO_TIMES="+times,
	)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	w := watchRSS(root, 0)
	start := time.Now()
	if err := cmd.Start(); err != nil {
		w.Peak()
		return Result{}, errors.Wrapf(err, "failed to start %s", d.Tools.Wrapper)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err = <-done:
	case <-ctx.Done():
		stopGroup(cmd, done, 30*time.Second)
		err = ctx.Err()
	}
	res := Result{Total: time.Since(start), Log: logPath}
	res.PeakRSS, res.Usage = w.Stop()
	if err != nil {
		return res, errors.Wrapf(err, "daemonless build failed; output: %s", tail(logPath, 3000))
	}
	res.CPUTotal = cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	if st, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok && res.PeakRSS == 0 {
		// never sampled (very short-lived daemon): the wrapper's
		// waited-for descendants, buildkitd the largest of them
		res.PeakRSS = st.Maxrss * 1024
	}
	if res.Build, res.BuildStart, res.BuildEnd, err = buildSpan(times); err != nil {
		return res, err
	}
	return res, nil
}

func (d *Daemonless) viaStarter(ctx context.Context, root string, args []string, logPath string) (Result, error) {
	start := time.Now()
	runDir, err := os.MkdirTemp(d.RunDir, "d")
	if err != nil {
		return Result{}, errors.WithStack(err)
	}
	defer os.RemoveAll(runDir)
	daemon, err := StartDaemon(ctx, d.Tools, root, d.Config, runDir)
	if err != nil {
		return Result{}, err
	}
	logf, err := os.Create(logPath)
	if err != nil {
		daemon.Stop()
		return Result{}, errors.WithStack(err)
	}
	defer logf.Close()
	w := watchRSS("", daemon.Pid())
	bstart := time.Now()
	err = daemon.Buildctl(ctx, logf, args...)
	res := Result{Build: time.Since(bstart), Log: logPath}
	res.PeakRSS, res.Usage = w.Stop()
	daemon.Stop()
	res.Total = time.Since(start)
	if err != nil {
		return res, errors.Wrapf(err, "build failed; output: %s", tail(logPath, 3000))
	}
	return res, nil
}

// MeasureBuild runs one build on this (warm) daemon, measuring its peak
// RSS and the growth of its root during the build alone.
func (d *Daemon) MeasureBuild(ctx context.Context, args []string, logPath string) (Result, error) {
	before, err := DirBytes(d.Root)
	if err != nil {
		return Result{}, err
	}
	logf, err := os.Create(logPath)
	if err != nil {
		return Result{}, errors.WithStack(err)
	}
	defer logf.Close()
	resetErr := resetHWM(d.Pid())
	start := time.Now()
	err = d.Buildctl(ctx, logf, args...)
	res := Result{Build: time.Since(start), Log: logPath}
	res.Total = res.Build
	if resetErr == nil {
		res.PeakRSS, _ = vmHWM(d.Pid())
	}
	if err != nil {
		return res, errors.Wrapf(err, "build failed; output: %s", tail(logPath, 3000))
	}
	return res, finish(&res, d.Root, logPath, before)
}

func finish(res *Result, root, logPath string, before int64) error {
	f, err := os.Open(logPath)
	if err != nil {
		return errors.WithStack(err)
	}
	defer f.Close()
	if res.Extract, err = CountExtractions(f); err != nil {
		return err
	}
	after, err := DirBytes(root)
	if err != nil {
		return err
	}
	res.RootBytes = after - before
	return nil
}

// buildTime reads the shim's record of the build invocation.
func buildTime(path string) (time.Duration, error) {
	d, _, _, err := buildSpan(path)
	return d, err
}

// buildSpan reads the shim's record of the build invocations: their total
// time, and when the last one started and ended.
func buildSpan(path string) (time.Duration, time.Time, time.Time, error) {
	var start, end time.Time
	f, err := os.Open(path)
	if err != nil {
		return 0, start, end, errors.Wrapf(err, "the wrapper did not run the build through BUILDCTL (no %s)", path)
	}
	defer f.Close()
	var total time.Duration
	s := bufio.NewScanner(f)
	for s.Scan() {
		fields := strings.Fields(s.Text())
		if len(fields) != 2 {
			return 0, start, end, errors.Errorf("malformed timing line %q in %s", s.Text(), path)
		}
		a, err1 := strconv.ParseInt(fields[0], 10, 64)
		b, err2 := strconv.ParseInt(fields[1], 10, 64)
		if err1 != nil || err2 != nil {
			return 0, start, end, errors.Errorf("malformed timing line %q in %s", s.Text(), path)
		}
		total += time.Duration(b - a)
		start, end = time.Unix(0, a), time.Unix(0, b)
	}
	return total, start, end, errors.WithStack(s.Err())
}
