package image

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// What upstream's images carry and ours must too, exercised as a user hits
// each: BuildKit's git source runs git, ADD of a .tar.xz runs xz, and
// containerd decompresses gzip layers with igzip, or else unpigz, when it is
// on PATH.

const (
	gitContextFile = "hello from the git context\n"
	gitAddedFile   = "added from another git repository\n"
)

// TestGitSource builds from a git context whose Dockerfile ADDs another git
// repository, both served by git daemon on 127.0.0.1, in both images.
func TestGitSource(t *testing.T) {
	e := requireEnv(t)
	addr := startGitDaemon(t, e.tl.git)
	for _, v := range e.variants() {
		t.Run(v.name, func(t *testing.T) {
			out := userDir(t)
			output, err := e.daemonless(t, v, runOpts{volumes: []string{out + ":/out"}},
				buildArgs("--opt", "context=git://"+addr+"/context.git")...)
			require.NoError(t, err, "build from a git context:\n%s", output)
			requireFileContent(t, filepath.Join(out, "hello.txt"), gitContextFile, output)
			requireFileContent(t, filepath.Join(out, "added", "added.txt"), gitAddedFile, output)
		})
	}
}

// startGitDaemon serves two repositories with git daemon on 127.0.0.1 and
// returns its address: context.git, a Dockerfile that ADDs added.git.
func startGitDaemon(t *testing.T, git string) string {
	t.Helper()
	addr, err := freePort()
	require.NoError(t, err)
	work, base := t.TempDir(), t.TempDir()
	repos := map[string]map[string]string{
		"context": {
			"Dockerfile": "FROM scratch\nCOPY hello.txt /hello.txt\nADD git://" + addr + "/added.git /added\n",
			"hello.txt":  gitContextFile,
		},
		"added": {"added.txt": gitAddedFile},
	}
	for name, files := range repos {
		dir := filepath.Join(work, name)
		require.NoError(t, os.Mkdir(dir, 0o755))
		for f, content := range files {
			require.NoError(t, os.WriteFile(filepath.Join(dir, f), []byte(content), 0o644))
		}
		for _, args := range [][]string{
			{"-C", dir, "init", "-q", "-b", "main"},
			{"-C", dir, "add", "."},
			{"-C", dir, "-c", "user.name=test", "-c", "user.email=test@localhost", "commit", "-q", "-m", name},
			{"clone", "-q", "--bare", dir, filepath.Join(base, name+".git")},
		} {
			out, err := exec.Command(git, args...).CombinedOutput()
			require.NoError(t, err, "git %s: %s", strings.Join(args, " "), out)
		}
	}
	host, port, err := net.SplitHostPort(addr)
	require.NoError(t, err)
	p, err := startProcess("git daemon", filepath.Join(t.TempDir(), "git-daemon.log"), git, "daemon",
		"--export-all", "--reuseaddr", "--informative-errors",
		"--listen="+host, "--port="+port, "--base-path="+base, base)
	require.NoError(t, err)
	t.Cleanup(p.stop)
	require.NoError(t, p.waitReady(func() error {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return err
		}
		return c.Close()
	}))
	return addr
}

// TestXzArchive builds `ADD rootfs.tar.xz /`, how Debian's and others' base
// images are made: BuildKit unpacks the archive with the xz command.
//
// An image whose layer blob is xz-compressed is not tested: BuildKit
// v0.34.2 unpacks layers with containerd v2.4.2, which knows gzip, zstd and
// uncompressed layers only ("unsupported compression format"), with or
// without xz installed.
func TestXzArchive(t *testing.T) {
	e := requireEnv(t)
	const marker = "unpacked from an xz archive\n"
	layer, err := tarFiles([]tarFile{{"etc/", 0o755, nil}, {"etc/xz-marker", 0o644, []byte(marker)}})
	require.NoError(t, err)
	cmd := exec.Command(e.tl.xz, "-c")
	cmd.Stdin = bytes.NewReader(layer)
	var xzOut, xzErr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &xzOut, &xzErr
	require.NoError(t, cmd.Run(), "xz -c: %s", xzErr.String())

	for _, v := range e.variants() {
		t.Run(v.name, func(t *testing.T) {
			ctxDir, out := userDir(t), userDir(t)
			require.NoError(t, os.WriteFile(filepath.Join(ctxDir, "Dockerfile"), []byte("FROM scratch\nADD rootfs.tar.xz /\n"), 0o644))
			require.NoError(t, os.WriteFile(filepath.Join(ctxDir, "rootfs.tar.xz"), xzOut.Bytes(), 0o644))
			output, err := e.daemonless(t, v, runOpts{volumes: []string{ctxDir + ":/workspace:ro", out + ":/out"}},
				buildArgs("--local=context=/workspace", "--local=dockerfile=/workspace")...)
			require.NoError(t, err, "ADD rootfs.tar.xz:\n%s", output)
			requireFileContent(t, filepath.Join(out, "etc", "xz-marker"), marker, output)
		})
	}
}

// decompressorProbe is put first on buildkitd's PATH under the name of a
// gzip decompressor: containerd finds it there, and it records its
// arguments, then runs the image's program of that name, which must exist.
// It is the signal that this decompressor decompressed the layer;
// containerd falls back to the next one, and finally to its own Go code,
// without a word when there is none.
const decompressorProbe = `#!/bin/sh
set -eu
echo "$*" >>/probe/%[1]s.log
exec /usr/bin/%[1]s "$@"
`

// TestGzipDecompressor builds FROM an image with one gzip layer, pulled
// from the loopback registry, in both images, with a probe for each of
// igzip and unpigz on PATH. containerd tries igzip first, so with both in
// the image igzip decompresses the layer and unpigz is not run; with
// CONTAINERD_DISABLE_IGZIP=1 it falls back to unpigz.
func TestGzipDecompressor(t *testing.T) {
	e := requireEnv(t)
	const marker = "unpacked from a gzip layer\n"
	layer, err := tarFiles([]tarFile{{"etc/", 0o755, nil}, {"etc/gzip-marker", 0o644, []byte(marker)}})
	require.NoError(t, err)
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	_, err = zw.Write(layer)
	require.NoError(t, err)
	require.NoError(t, zw.Close())
	ref, err := e.pushLayer("test/gzip-layer", "1", gz.Bytes(), mediaTypeOCILayerGzip, digestOf(layer))
	require.NoError(t, err)

	for _, tc := range []struct {
		name      string
		env       []string
		used, not string
	}{
		{name: "igzip first", used: "igzip", not: "unpigz"},
		{name: "igzip disabled", env: []string{"CONTAINERD_DISABLE_IGZIP=1"}, used: "unpigz", not: "igzip"},
	} {
		for _, v := range e.variants() {
			t.Run(strings.ReplaceAll(tc.name, " ", "_")+"/"+v.name, func(t *testing.T) {
				ctxDir, out, probe := userDir(t), userDir(t), userDir(t)
				require.NoError(t, os.WriteFile(filepath.Join(ctxDir, "Dockerfile"), []byte("FROM "+ref+"\n"), 0o644))
				require.NoError(t, os.MkdirAll(filepath.Join(probe, "bin"), 0o755))
				for _, name := range []string{"igzip", "unpigz"} {
					require.NoError(t, os.WriteFile(filepath.Join(probe, "bin", name), fmt.Appendf(nil, decompressorProbe, name), 0o755))
				}
				output, err := e.daemonless(t, v, runOpts{
					volumes: []string{ctxDir + ":/workspace:ro", out + ":/out", probe + ":/probe"},
					env:     append([]string{"PATH=/probe/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}, tc.env...),
				}, buildArgs("--local=context=/workspace", "--local=dockerfile=/workspace")...)
				require.NoError(t, err, "FROM a gzip layer:\n%s", output)
				requireFileContent(t, filepath.Join(out, "etc", "gzip-marker"), marker, output)
				requireFileContent(t, filepath.Join(probe, tc.used+".log"), "-d -c\n", output)
				require.NoFileExists(t, filepath.Join(probe, tc.not+".log"), "%s ran as well:\n%s", tc.not, output)
			})
		}
	}
}
