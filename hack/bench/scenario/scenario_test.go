package scenario

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestDirBytesCountsHardLinksOnce(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "a"), make([]byte, 1000), 0o644))
	require.NoError(t, os.Link(filepath.Join(dir, "a"), filepath.Join(dir, "b")))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "c"), make([]byte, 24), 0o644))
	fi, err := os.Stat(dir)
	require.NoError(t, err)
	n, err := DirBytes(dir)
	require.NoError(t, err)
	require.Equal(t, 1024+fi.Size(), n)
}

func TestCloneCacheLinksBlobsCopiesIndex(t *testing.T) {
	src, dst := t.TempDir(), filepath.Join(t.TempDir(), "clone")
	blob := filepath.Join("blobs", "sha256", "abc")
	require.NoError(t, os.MkdirAll(filepath.Join(src, "blobs", "sha256"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(src, blob), []byte("layer"), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(src, "index.json"), []byte("{}"), 0o644))
	require.NoError(t, CloneCache(src, dst))

	a, b := stat(t, filepath.Join(src, blob)), stat(t, filepath.Join(dst, blob))
	require.Equal(t, a.Ino, b.Ino, "blobs are hard links")
	a, b = stat(t, filepath.Join(src, "index.json")), stat(t, filepath.Join(dst, "index.json"))
	require.NotEqual(t, a.Ino, b.Ino, "index.json is a copy the exporter may rewrite")

	require.NoError(t, os.WriteFile(filepath.Join(dst, "index.json"), []byte(`{"changed":1}`), 0o644))
	got, err := os.ReadFile(filepath.Join(src, "index.json"))
	require.NoError(t, err)
	require.Equal(t, "{}", string(got))
}

func stat(t *testing.T, p string) *syscall.Stat_t {
	fi, err := os.Stat(p)
	require.NoError(t, err)
	return fi.Sys().(*syscall.Stat_t)
}

func TestDockerfile(t *testing.T) {
	plain := Dockerfile("127.0.0.1:5000/base:latest", false)
	require.True(t, strings.HasPrefix(plain, "FROM 127.0.0.1:5000/base:latest\n"))
	require.True(t, strings.HasSuffix(plain, "\nCOPY . ./\n"))
	require.True(t, strings.HasSuffix(Dockerfile("b", true), "\nCOPY --link . ./\n"))
}

func TestProjectArgs(t *testing.T) {
	p := &Project{Dir: "/ctx"}
	require.Equal(t, []string{
		"build", "--progress=plain", "--frontend=dockerfile.v0",
		"--local", "context=/ctx", "--local", "dockerfile=/ctx",
		"--export-cache", "type=local,dest=/c,mode=max",
		"--import-cache", "type=local,src=/c,lazy=true",
		"--output", "type=oci,dest=/o.tar",
	}, p.Args(LocalCache("/c", true), "type=oci,dest=/o.tar"))
	require.Equal(t, "type=local,src=/c", LocalCache("/c", false).Import)
	require.Equal(t, Cache{Import: "type=registry,ref=r/c:b1", Export: "type=registry,ref=r/c:x,mode=max"}, RegistryCache("r/c:b1", "r/c:x"))
}

func TestSetRevisionRestoresBuildOne(t *testing.T) {
	p, err := WriteProject(t.TempDir(), "base", false)
	require.NoError(t, err)
	path := filepath.Join(p.Dir, "src", "version.txt")
	before, err := os.Stat(path)
	require.NoError(t, err)
	require.NoError(t, p.SetRevision(3))
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	require.Equal(t, "revision 3\n", string(b))
	require.NoError(t, p.SetRevision(0))
	after, err := os.Stat(path)
	require.NoError(t, err)
	require.Equal(t, before.ModTime(), after.ModTime())
}

func TestCaseByName(t *testing.T) {
	c, err := CaseByName("link")
	require.NoError(t, err)
	require.True(t, c.Link)
	_, err = CaseByName("nope")
	require.ErrorContains(t, err, `unknown case "nope"`)
}

func TestBaseLayers(t *testing.T) {
	require.Equal(t, 3, baseLayers(50*MB))
	require.Equal(t, 6, baseLayers(350*MB))
	require.Equal(t, 12, baseLayers(1200*MB))
}

func TestBuildTime(t *testing.T) {
	p := filepath.Join(t.TempDir(), "times")
	require.NoError(t, os.WriteFile(p, []byte("1000000000 3500000000\n"), 0o644))
	d, err := buildTime(p)
	require.NoError(t, err)
	require.Equal(t, "2.5s", d.String())
	_, err = buildTime(filepath.Join(t.TempDir(), "missing"))
	require.ErrorContains(t, err, "did not run the build through BUILDCTL")
}

func TestFindRepoRoot(t *testing.T) {
	for _, tc := range []struct {
		name  string
		files []string // under the temporary directory; a trailing / makes a directory
		from  string
		want  string // "" means an error
	}{
		{name: "from a nested module", files: []string{"Makefile", ".git/", "hack/bench/go.mod"}, from: "hack/bench", want: "."},
		{name: "from the root", files: []string{"Makefile", ".git/"}, from: ".", want: "."},
		{name: ".git is a file in a worktree", files: []string{"Makefile", ".git", "hack/bench/"}, from: "hack/bench", want: "."},
		{name: "nearest wins", files: []string{"Makefile", ".git/", "sub/Makefile", "sub/.git/", "sub/dir/"}, from: "sub/dir", want: "sub"},
		{name: "Makefile without .git is not a root", files: []string{"Makefile", ".git/", "hack/Makefile", "hack/bench/"}, from: "hack/bench", want: "."},
		{name: "none", files: []string{"hack/Makefile", "hack/bench/"}, from: "hack/bench"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			for _, f := range tc.files {
				p := filepath.Join(dir, f)
				if strings.HasSuffix(f, "/") {
					require.NoError(t, os.MkdirAll(p, 0o755))
					continue
				}
				require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o755))
				require.NoError(t, os.WriteFile(p, nil, 0o644))
			}
			got, err := FindRepoRoot(filepath.Join(dir, tc.from))
			if tc.want == "" {
				require.ErrorContains(t, err, "no repository root")
				return
			}
			require.NoError(t, err)
			require.Equal(t, filepath.Join(dir, tc.want), got)
		})
	}
}

func TestBaseContextListsItsFiles(t *testing.T) {
	_, err := exec.LookPath("busybox")
	require.NoError(t, err, "busybox in PATH: apt-get install busybox-static (make deps)")
	dir := t.TempDir()
	_, layers, files, err := prepareBaseContext(context.Background(), dir, 2*MB, baseLayers(2*MB))
	require.NoError(t, err)
	require.Contains(t, files, "/bin/busybox")
	require.Greater(t, len(files), layers)
	for inImage, src := range files {
		inContext := filepath.Join(dir, "rootfs", inImage)
		if rest, ok := strings.CutPrefix(inImage, "/opt/base/"); ok {
			layer, _, _ := strings.Cut(rest, "/")
			inContext = filepath.Join(dir, "layer"+layer, inImage)
		}
		want, err := os.ReadFile(src)
		require.NoError(t, err)
		got, err := os.ReadFile(inContext)
		require.NoError(t, err, inImage)
		require.Equal(t, want, got, inImage)
	}
}

func TestCaseLocalCache(t *testing.T) {
	for _, tc := range []struct {
		name, wantExport string
	}{
		{name: "cached", wantExport: "type=local,dest=/c,mode=max"},
		{name: "newdir", wantExport: "type=local,dest=/c-new,mode=max"},
		{name: "reset", wantExport: "type=local,dest=/c,mode=max,reset=true"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := CaseByName(tc.name)
			require.NoError(t, err)
			got := c.LocalCache("/c", true)
			require.Equal(t, "type=local,src=/c,lazy=true", got.Import)
			require.Equal(t, tc.wantExport, got.Export)
		})
	}
}

func TestHashDirReadsEveryFile(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "blobs", "sha256"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "blobs", "sha256", "a"), make([]byte, 3<<20), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "index.json"), []byte("{}"), 0o644))
	_, n, err := HashDir(dir)
	require.NoError(t, err)
	require.Equal(t, int64(3<<20+2), n)
	_, _, err = HashDir(filepath.Join(dir, "missing"))
	require.Error(t, err)
}
