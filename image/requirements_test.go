package image

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
// a FROM scratch image: the stand-in node:20 is made of it.
const busyboxPath = "/bin/busybox"

// tools are the programs and files the tests use.
type tools struct {
	docker, dockerd, registry string
	// git serves repositories with git daemon; xz compresses an archive.
	git, xz string
	// buildkitd is only asked for its version, which names the images.
	buildkitd, buildx string
	// rootTar and rootlessTar are the docker load-able images make image
	// writes.
	rootTar, rootlessTar string
}

// requireTools returns the tools or fails the test saying what to install or
// build. A missing requirement is a failure, never a skip: `make test` must
// not pass without running these tests.
func requireTools(t *testing.T) tools {
	t.Helper()
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root: the tests start a dockerd; run them as root")
	}
	const installDeps = "install it with hack/install-deps image"
	tl := tools{
		docker:      lookPath("docker", &missing, "docker: "+installDeps+" (Debian's docker.io)"),
		dockerd:     lookPath("dockerd", &missing, "dockerd: "+installDeps+" (Debian's docker.io)"),
		registry:    lookPath("docker-registry", &missing, "docker-registry: "+installDeps+" (Debian's docker-registry)"),
		git:         lookPath("git", &missing, "git: "+installDeps+" (Debian's git)"),
		xz:          lookPath("xz", &missing, "xz: "+installDeps+" (Debian's xz-utils)"),
		buildkitd:   repoFile("bin/buildkitd"),
		buildx:      repoFile("bin/buildx"),
		rootTar:     repoFile("dist/image/buildkit.tar"),
		rootlessTar: repoFile("dist/image/buildkit-rootless.tar"),
	}
	if _, err := exec.LookPath("runc"); err != nil {
		missing = append(missing, "runc: "+installDeps+" (Debian's runc)")
	}
	for _, f := range []struct{ path, how string }{
		{tl.buildkitd, "make build"},
		{tl.buildx, "make bin/buildx"},
		{tl.rootTar, "make image"},
		{tl.rootlessTar, "make image"},
	} {
		if _, err := os.Stat(f.path); err != nil {
			missing = append(missing, f.path+": run "+f.how)
		}
	}
	if err := staticELF(busyboxPath); err != nil {
		missing = append(missing, "a static "+busyboxPath+" ("+err.Error()+"): install Debian's busybox-static (hack/install-deps)")
	}
	if len(missing) > 0 {
		t.Fatalf("missing requirements:\n  %s", strings.Join(missing, "\n  "))
	}
	return tl
}

func lookPath(name string, missing *[]string, hint string) string {
	p, err := exec.LookPath(name)
	if err != nil {
		*missing = append(*missing, hint)
		return name
	}
	return p
}

// repoFile returns the absolute path of p, relative to the repository root.
func repoFile(p string) string {
	abs, err := filepath.Abs(filepath.Join("..", p))
	if err != nil {
		return p
	}
	return abs
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
