package main

import (
	"debug/elf"
	"os"
	"os/exec"
	"path"
	"strings"

	ocispecs "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/pkg/errors"
)

// defaultPath is the PATH of the official busybox and alpine images.
const defaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// foreignURL is where the foreign layer claims to live. Nothing listens
// there; the blob is pushed to the mirror as well, and upstream's
// testBuildExportWithForeignLayer passes offline with both.
const foreignURL = "http://127.0.0.1:9/buildkit-foreign/layer.tar"

// apkStub stands in for alpine's package manager, which needs the network.
const apkStub = `#!/bin/sh
echo "apk: not available in the offline alpine stand-in (hack/testimages)" >&2
exit 1
`

// The user database of the official busybox image.
const (
	etcPasswd = `root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
bin:x:2:2:bin:/bin:/bin/false
sys:x:3:3:sys:/dev:/bin/false
sync:x:4:100:sync:/bin:/bin/sync
mail:x:8:8:mail:/var/spool/mail:/bin/false
www-data:x:33:33:www-data:/var/www:/bin/false
operator:x:37:37:Operator:/var:/bin/false
nobody:x:65534:65534:nobody:/home:/bin/false
`
	etcGroup = `root:x:0:
daemon:x:1:
bin:x:2:
sys:x:3:
adm:x:4:
tty:x:5:
disk:x:6:
wheel:x:10:root
mail:x:8:
www-data:x:33:
operator:x:37:
staff:x:50:
users:x:100:
nogroup:x:65534:
nobody:x:65534:
`
)

// standIns returns the images that upstream's client integration tests
// mirror (client_test.go testIntegration and TestClientGatewayIntegration,
// frontend/dockerfile/dockerfile_test.go),
// built from the busybox binary at busyboxPath.
func standIns(busyboxPath string) ([]image, error) {
	bb, err := busyboxEntries(busyboxPath)
	if err != nil {
		return nil, err
	}
	busybox, err := buildLayer(bb)
	if err != nil {
		return nil, err
	}
	// No musl and no package manager: /sbin/apk is there because tests tell
	// an alpine mount from a busybox one by it (client_mount_test.go
	// testRunCacheWithMounts), and it fails loudly when run.
	alpine, err := buildLayer(append(bb,
		file("sbin/apk", 0755, []byte(apkStub)),
		file("etc/alpine-release", 0644, []byte("3.18.0\n")),
		file("etc/os-release", 0644, []byte(`NAME="Alpine Linux (busybox stand-in, no apk)"
ID=alpine
VERSION_ID=3.18.0
`)),
	))
	if err != nil {
		return nil, err
	}
	foreign, err := buildLayer([]entry{
		dir("foreign", 0755),
		file("foreign/hello", 0644, []byte("from a foreign layer\n")),
	})
	if err != nil {
		return nil, err
	}
	regular, err := buildLayer([]entry{
		dir("regular", 0755),
		file("regular/hello", 0644, []byte("from a regular layer\n")),
	})
	if err != nil {
		return nil, err
	}

	shell := ocispecs.ImageConfig{Env: []string{defaultPath}}
	return []image{
		{name: "library/busybox:latest", layers: []layer{busybox}, config: withCmd(shell, "sh")},
		{name: "library/alpine:latest", layers: []layer{alpine}, config: withCmd(shell, "/bin/sh")},
		// frontend/dockerfile's tests mirror it besides busybox:latest and
		// alpine:latest; Debian's busybox-static is not musl, but the tests
		// that run here only need a busybox.
		{name: "library/busybox:stable-musl", layers: []layer{busybox}, config: withCmd(shell, "sh")},
		// client_fileop_test.go: an image with no layers at all.
		{name: "tonistiigi/test:nolayers", config: ocispecs.ImageConfig{Env: []string{defaultPath}}},
		// client_export_image_test.go testBuildExportWithForeignLayer: two
		// uncompressed Docker layers, the first a foreign layer with one URL.
		{
			name:         "cpuguy83/buildkit-foreign:latest",
			layers:       []layer{foreign, regular},
			config:       ocispecs.ImageConfig{Env: []string{defaultPath}},
			foreign:      map[int][]string{0: {foreignURL}},
			docker:       true,
			uncompressed: true,
		},
	}, nil
}

func withCmd(cfg ocispecs.ImageConfig, cmd ...string) ocispecs.ImageConfig {
	cfg.Cmd = cmd
	return cfg
}

// busyboxEntries lays out a root filesystem of a statically linked busybox:
// the binary at /bin/busybox, each applet as a symlink to it both in /bin
// (as the official image has them) and where busybox itself installs it,
// and the directories and user database of the official image.
func busyboxEntries(busyboxPath string) ([]entry, error) {
	bin, err := os.ReadFile(busyboxPath)
	if err != nil {
		return nil, errors.Wrapf(err, "failed to read busybox (install the Debian package busybox-static)")
	}
	if err := checkStatic(busyboxPath); err != nil {
		return nil, err
	}
	out, err := exec.Command(busyboxPath, "--list-full").Output()
	if err != nil {
		return nil, errors.Wrapf(err, "failed to list the applets of %s", busyboxPath)
	}

	entries := []entry{
		dir("bin", 0755),
		dir("dev", 0755),
		dir("etc", 0755),
		dir("home", 0755),
		dir("root", 0700),
		dir("sbin", 0755),
		dir("tmp", 0777|os.ModeSticky),
		dir("usr", 0755),
		dir("usr/bin", 0755),
		dir("usr/sbin", 0755),
		dir("var", 0755),
		dir("var/spool", 0755),
		dir("var/spool/mail", 0755),
		dir("var/www", 0755),
		file("bin/busybox", 0755, bin),
		file("etc/passwd", 0644, []byte(etcPasswd)),
		file("etc/group", 0644, []byte(etcGroup)),
	}
	seen := map[string]struct{}{"bin/busybox": {}}
	add := func(p string) {
		if _, ok := seen[p]; ok {
			return
		}
		seen[p] = struct{}{}
		entries = append(entries, symlink(p, "/bin/busybox"))
	}
	for _, p := range strings.Fields(string(out)) {
		switch path.Dir(p) {
		case "bin", "sbin", "usr/bin", "usr/sbin":
			add("bin/" + path.Base(p))
			add(p)
		}
	}
	return entries, nil
}

// checkStatic refuses a dynamically linked busybox: the images have no libc
// for it to load.
func checkStatic(p string) error {
	f, err := elf.Open(p)
	if err != nil {
		return errors.Wrapf(err, "%s is not an ELF binary", p)
	}
	defer f.Close()
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP {
			return errors.Errorf("%s is dynamically linked: install the Debian package busybox-static", p)
		}
	}
	return nil
}
