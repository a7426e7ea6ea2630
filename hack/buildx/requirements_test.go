package buildx

import (
	"debug/elf"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// busyboxPath is where Debian's busybox-static installs a shell that runs in
// a FROM scratch image.
const busyboxPath = "/bin/busybox"

// tools are the programs the tests run. Each binary can be overridden by an
// environment variable of its upper-case name (BUILDKITD=/path/to/buildkitd
// runs the same tests against another daemon).
type tools struct {
	buildkitd string
	buildctl  string
	// buildx runs the tests that do not name a client: bin/buildx, stock
	// buildx (make test-buildx runs them again with BUILDX set to ours).
	buildx string
	// stockBuildx and oursBuildx are the two clients that the tests of
	// what differs between them run side by side: bin/buildx, and
	// dist/docker-buildx, the same buildx on our client library.
	stockBuildx, oursBuildx string
}

// requireTools returns the tools or fails the test saying what to install or
// build. A missing requirement is a failure, never a skip: `make test` must
// not pass without running these tests.
func requireTools(t *testing.T) tools {
	t.Helper()
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root: buildkitd runs rootful with the runc worker; run the tests as root")
	}
	tl := tools{
		buildkitd: binary("BUILDKITD", "buildkitd"),
		buildctl:  binary("BUILDCTL", "buildctl"),
		buildx:    binary("BUILDX", "buildx"),
	}
	tl.stockBuildx = binary("BUILDX_STOCK", "buildx")
	tl.oursBuildx = os.Getenv("BUILDX_OURS")
	if tl.oursBuildx == "" {
		tl.oursBuildx, _ = filepath.Abs(filepath.Join("..", "..", "dist", "docker-buildx"))
	}
	for _, b := range []struct{ path, how string }{
		{tl.buildkitd, "make build"},
		{tl.buildctl, "make build"},
		{tl.buildx, "make bin/buildx"},
		{tl.stockBuildx, "make bin/buildx"},
		{tl.oursBuildx, "make build"},
	} {
		if !executable(b.path) {
			missing = append(missing, b.path+": run "+b.how)
		}
	}
	if _, err := exec.LookPath("runc"); err != nil {
		missing = append(missing, "runc: install Debian's runc (apt-get install runc, or hack/install-deps)")
	}
	if err := staticELF(busyboxPath); err != nil {
		missing = append(missing, "a static "+busyboxPath+" ("+err.Error()+"): install Debian's busybox-static (apt-get install busybox-static, or hack/install-deps)")
	}
	if len(missing) > 0 {
		t.Fatalf("missing requirements:\n  %s", strings.Join(missing, "\n  "))
	}
	return tl
}

// binary returns $env if set, else bin/name at the repository root.
func binary(env, name string) string {
	if p := os.Getenv(env); p != "" {
		return p
	}
	p, err := filepath.Abs(filepath.Join("..", "..", "bin", name))
	if err != nil {
		return name
	}
	return p
}

func executable(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}

// staticELF fails for a missing file or a dynamically linked one: only a
// static binary runs in an image that holds nothing else.
func staticELF(p string) error {
	f, err := elf.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP {
			return fmt.Errorf("%s is dynamically linked", p)
		}
	}
	return nil
}
