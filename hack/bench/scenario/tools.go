// Package scenario runs the daemonless rebuild scenario of moby/buildkit#6572
// end to end: a loopback registry, a generated base image of a chosen
// compressed size, the report's Dockerfiles, and builds through
// buildctl-daemonless.sh with a fresh buildkitd per build, measured the same
// way for the demo and the benchmark.
package scenario

import (
	"os"
	"os/exec"
	"path/filepath"

	"github.com/pkg/errors"
)

// WrapperPath is where the daemonless wrapper lives in this repository.
const WrapperPath = "daemonless/buildctl-daemonless.sh"

// Tools are the executables a scenario runs, as absolute paths.
type Tools struct {
	Buildctl  string
	Buildkitd string
	// Wrapper is buildctl-daemonless.sh; empty means the internal starter
	// (see Daemonless) stands in for it.
	Wrapper string
	// Registry is Debian's docker-registry (upstream calls it registry).
	Registry string
}

// FindRepoRoot returns the nearest directory at or above dir that holds both
// a Makefile and .git (a directory, or a file in a git worktree). The tools
// run from their own module under hack/ (make demo does cd hack/bench), so
// bin/, daemonless/ and docs/ are resolved against this root, not the working
// directory.
func FindRepoRoot(dir string) (string, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", errors.Wrapf(err, "failed to resolve %s", dir)
	}
	for d := abs; ; d = filepath.Dir(d) {
		if exists(filepath.Join(d, "Makefile")) && exists(filepath.Join(d, ".git")) {
			return d, nil
		}
		if filepath.Dir(d) == d {
			return "", errors.Errorf("no repository root (a directory holding Makefile and .git) at or above %s: run inside the repository or pass -repo", abs)
		}
	}
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// FindTools locates the tools relative to the repository root: our
// bin/buildctl and bin/buildkitd, the wrapper when it exists, and the
// registry in bin/ or PATH.
func FindTools(repoRoot string) (Tools, error) {
	root, err := filepath.Abs(repoRoot)
	if err != nil {
		return Tools{}, errors.Wrap(err, "failed to resolve repository root")
	}
	t := Tools{
		Buildctl:  filepath.Join(root, "bin", "buildctl"),
		Buildkitd: filepath.Join(root, "bin", "buildkitd"),
	}
	for _, p := range []string{t.Buildctl, t.Buildkitd} {
		if _, err := os.Stat(p); err != nil {
			return Tools{}, errors.Wrapf(err, "missing %s: run make build", p)
		}
	}
	if w := filepath.Join(root, WrapperPath); isExecutable(w) {
		t.Wrapper = w
	}
	for _, name := range []string{filepath.Join(root, "bin", "registry"), "docker-registry", "registry"} {
		if p, err := exec.LookPath(name); err == nil {
			t.Registry, _ = filepath.Abs(p)
			break
		}
	}
	if t.Registry == "" {
		return Tools{}, errors.New("no docker-registry binary found: run make deps (Debian package docker-registry)")
	}
	return t, nil
}

func isExecutable(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}
