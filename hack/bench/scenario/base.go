package scenario

import (
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"

	"github.com/pkg/errors"
)

// Logf prints progress.
type Logf func(format string, args ...any)

// MB is the unit sizes are given in on the command line.
const MB = 1000 * 1000

// BaseSource is where base image files come from: real files with real
// compressibility. They are hard-linked into the build context, never
// written.
const BaseSource = "/usr"

// BaseImage is a generated base image pushed to the loopback registry.
type BaseImage struct {
	Ref          string
	Target       int64 // compressed size asked for
	Compressed   int64 // sum of pushed layer sizes
	Uncompressed int64 // sum of file sizes put in
	Layers       int
	// Files maps each regular file the generator put in the image, by
	// its absolute path there, to the file on this machine it holds, so
	// that a caller can tell what a build read from the image.
	Files map[string]string
}

// baseLayers picks how many data layers an image of target compressed
// bytes has: about 60 MB each, at least 3, at most 12.
func baseLayers(target int64) int {
	return int(min(max((target+30*MB)/(60*MB), 3), 12))
}

// MakeBase generates a base image of about target compressed bytes,
// builds it with a daemon of its own (state under workDir), pushes it to
// reg as repo:latest and removes everything it made locally.
func MakeBase(ctx context.Context, tools Tools, reg *Registry, config, workDir, repo string, target int64, logf Logf) (BaseImage, error) {
	return makeBase(ctx, tools, reg, config, workDir, repo, target, baseLayers(target), logf)
}

// makeBase is MakeBase with dataLayers layers of files above the rootfs.
func makeBase(ctx context.Context, tools Tools, reg *Registry, config, workDir, repo string, target int64, dataLayers int, logf Logf) (BaseImage, error) {
	dir, err := os.MkdirTemp(workDir, "base-")
	if err != nil {
		return BaseImage{}, errors.WithStack(err)
	}
	defer RemoveAll(dir)
	ctxDir := filepath.Join(dir, "context")
	img := BaseImage{Ref: reg.Addr + "/" + repo + ":latest", Target: target}
	logf("preparing base image context: ~%d MB compressed from %s (gzip estimate per file)", target/MB, BaseSource)
	img.Uncompressed, img.Layers, img.Files, err = prepareBaseContext(ctx, ctxDir, target, dataLayers)
	if err != nil {
		return img, err
	}
	logf("building %s: %d layers, %d MB uncompressed, pushing to the loopback registry", img.Ref, img.Layers, img.Uncompressed/MB)
	d, err := StartDaemon(ctx, tools, filepath.Join(dir, "root"), config, dir)
	if err != nil {
		return img, err
	}
	defer d.Stop()
	logPath := filepath.Join(dir, "build.log")
	out, err := os.Create(logPath)
	if err != nil {
		return img, errors.WithStack(err)
	}
	defer out.Close()
	err = d.Buildctl(ctx, out, "build", "--progress=plain", "--frontend=dockerfile.v0",
		"--local", "context="+ctxDir, "--local", "dockerfile="+ctxDir,
		"--output", "type=image,name="+img.Ref+",push=true,registry.insecure=true,oci-mediatypes=true")
	if err != nil {
		return img, errors.Wrapf(err, "failed to build the base image; output: %s", tail(logPath, 3000))
	}
	size, err := reg.Size(ctx, repo, "latest")
	if err != nil {
		return img, err
	}
	img.Compressed = size.Compressed
	img.Layers = size.Layers
	logf("pushed %s: %d layers, %d MB compressed, %d MB uncompressed", img.Ref, img.Layers, img.Compressed/MB, img.Uncompressed/MB)
	return img, nil
}

type baseFile struct {
	path string
	size int64
	gz   int64
}

// prepareBaseContext lays out dir as a Dockerfile context: rootfs/ (static
// busybox as /bin/sh and its applets) and layerN/opt/base/N/..., filled
// with files from BaseSource until the estimated compressed total reaches
// target, cycling over the source again if it runs out. placed maps the
// image path of each regular file to its source (see BaseImage.Files);
// layers is the number of layerN directories, imageLayers that plus the
// rootfs.
func prepareBaseContext(ctx context.Context, dir string, target int64, layers int) (uncompressed int64, imageLayers int, placed map[string]string, err error) {
	busybox, err := writeRootfs(filepath.Join(dir, "rootfs"))
	if err != nil {
		return 0, 0, nil, err
	}
	placed = map[string]string{"/bin/busybox": busybox}
	files, err := listFiles(BaseSource)
	if err != nil {
		return 0, 0, nil, err
	}
	if len(files) == 0 {
		return 0, 0, nil, errors.Errorf("no files under %s to make a base image of", BaseSource)
	}
	perLayer := target / int64(layers)
	// A file bigger than a quarter of a layer (a 100 MB node binary) would
	// overshoot the size asked for: leave it out.
	maxFile := perLayer / 4
	var (
		total  int64 // estimated compressed bytes placed so far
		pass   = 0
		next   = 0
		inPass = 0 // files placed in this pass
	)
	const batch = 256
	for total < target {
		if err := ctx.Err(); err != nil {
			return 0, 0, nil, err
		}
		if next >= len(files) {
			if inPass == 0 {
				return 0, 0, nil, errors.Errorf("no file under %s is small enough for a %d-layer image of %d bytes", BaseSource, layers, target)
			}
			next, pass, inPass = 0, pass+1, 0
		}
		end := min(next+batch, len(files))
		chunk := files[next:end]
		next = end
		estimate(chunk)
		for _, f := range chunk {
			if total >= target {
				break
			}
			if f.gz == 0 || f.gz > maxFile {
				continue
			}
			layer := min(total/perLayer+1, int64(layers))
			rel, _ := filepath.Rel(BaseSource, f.path)
			inImage := filepath.Join("/opt", "base", fmt.Sprint(layer), fmt.Sprintf("pass%d", pass), rel)
			if err := linkOrCopy(f.path, filepath.Join(dir, fmt.Sprintf("layer%d", layer), inImage)); err != nil {
				return 0, 0, nil, err
			}
			placed[inImage] = f.path
			uncompressed += f.size
			total += f.gz
			inPass++
		}
	}
	var df strings.Builder
	df.WriteString("FROM scratch\nCOPY rootfs/ /\n")
	for i := 1; i <= layers; i++ {
		fmt.Fprintf(&df, "COPY layer%d/ /\n", i)
	}
	if err := os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte(df.String()), 0o644); err != nil {
		return 0, 0, nil, errors.WithStack(err)
	}
	return uncompressed, layers + 1, placed, nil
}

// minBaseFile leaves out the smallest files: under /usr, two thirds of the
// files are below 4 KB but hold 2% of the bytes, and on this 2-core VM
// creating and deleting them, not the bytes, would set the pace of every
// extraction and cleanup. What remains still has /usr's compressibility.
const minBaseFile = 4096

// listFiles lists readable regular files of at least minBaseFile bytes
// under root in lexical order.
func listFiles(root string) ([]baseFile, error) {
	var out []baseFile
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if d != nil && d.IsDir() && p != root {
				return fs.SkipDir
			}
			return nil
		}
		if !d.Type().IsRegular() {
			return nil
		}
		fi, err := d.Info()
		if err != nil || fi.Size() < minBaseFile || fi.Mode().Perm()&0o004 == 0 {
			return nil
		}
		out = append(out, baseFile{path: p, size: fi.Size()})
		return nil
	})
	return out, errors.Wrapf(err, "failed to list %s", root)
}

// estimate fills in each file's gzip size (default level, as layers are
// compressed), on every core; unreadable files get 0 and are skipped.
func estimate(files []baseFile) {
	var wg sync.WaitGroup
	ch := make(chan int)
	for range max(1, runtime.NumCPU()) {
		wg.Go(func() {
			for i := range ch {
				if files[i].gz != 0 {
					continue
				}
				if v, ok := gzipSizes.Load(files[i].path); ok {
					files[i].gz = v.(int64)
					continue
				}
				files[i].gz = gzipSize(files[i].path)
				gzipSizes.Store(files[i].path, files[i].gz)
			}
		})
	}
	for i := range files {
		ch <- i
	}
	close(ch)
	wg.Wait()
}

// gzipSizes remembers estimates, so the benchmark's bigger images reuse
// those of the smaller ones made before them.
var gzipSizes sync.Map

// gzipSample is how much of a file gzipSize compresses; the rest is assumed
// to compress alike, which keeps estimating a 1 GB image to seconds.
const gzipSample = 1 << 20

func gzipSize(p string) int64 {
	f, err := os.Open(p)
	if err != nil {
		return 0
	}
	defer f.Close()
	var c countWriter
	zw := gzip.NewWriter(&c)
	n, err := io.Copy(zw, io.LimitReader(f, gzipSample))
	if err != nil || n == 0 {
		return 0
	}
	if err := zw.Close(); err != nil {
		return 0
	}
	fi, err := f.Stat()
	if err != nil {
		return 0
	}
	return int64(float64(c)*float64(fi.Size())/float64(n)) + 512 // + tar header
}

type countWriter int64

func (c *countWriter) Write(p []byte) (int, error) {
	*c += countWriter(len(p))
	return len(p), nil
}

func linkOrCopy(src, dst string) error {
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return errors.WithStack(err)
	}
	err := os.Link(src, dst)
	if err == nil {
		return nil
	}
	var le *os.LinkError
	if errors.As(err, &le) && (le.Err == syscall.EXDEV || le.Err == syscall.EPERM) {
		return copyFile(src, dst)
	}
	return errors.WithStack(err)
}

// writeRootfs makes the base image's first layer: a static busybox as
// /bin/busybox with its applets (sh, ls, wc, ...) as symlinks, /etc and /tmp.
// It returns the busybox it copied.
func writeRootfs(dir string) (string, error) {
	busybox, err := exec.LookPath("busybox")
	if err != nil {
		return "", errors.Wrap(err, "no busybox in PATH: run make deps (Debian package busybox-static)")
	}
	bin := filepath.Join(dir, "bin")
	if err := os.MkdirAll(bin, 0o755); err != nil {
		return "", errors.WithStack(err)
	}
	if err := copyFile(busybox, filepath.Join(bin, "busybox")); err != nil {
		return "", err
	}
	if err := os.Chmod(filepath.Join(bin, "busybox"), 0o755); err != nil {
		return "", errors.WithStack(err)
	}
	list, err := exec.Command(busybox, "--list").Output()
	if err != nil {
		return "", errors.Wrapf(err, "%s --list", busybox)
	}
	for _, name := range strings.Fields(string(list)) {
		if name == "busybox" || strings.Contains(name, "/") {
			continue
		}
		if err := os.Symlink("busybox", filepath.Join(bin, name)); err != nil {
			return "", errors.WithStack(err)
		}
	}
	for name, body := range map[string]string{
		"etc/passwd": "root:x:0:0:root:/root:/bin/sh\n",
		"etc/group":  "root:x:0:\n",
	} {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return "", errors.WithStack(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			return "", errors.WithStack(err)
		}
	}
	return busybox, errors.WithStack(os.MkdirAll(filepath.Join(dir, "tmp"), 0o1777))
}
