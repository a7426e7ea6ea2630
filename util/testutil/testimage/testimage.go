// Package testimage makes small container images for tests on a machine with
// no network: the host's static busybox (Debian's busybox-static) for /bin/sh
// and layers of generated files, built by BuildKit itself and pushed to a
// loopback registry.
package testimage

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/moby/buildkit/client"
	"github.com/moby/buildkit/client/llb"
	"github.com/pkg/errors"
	"github.com/stretchr/testify/require"
	"github.com/tonistiigi/fsutil"
)

// BusyboxPath is where Debian's busybox-static installs a static busybox.
const BusyboxPath = "/bin/busybox"

// busyboxLocal is the name of the local mount that carries busybox.
const busyboxLocal = "testimage-busybox"

// Layer is the content of one generated layer: file contents by path.
type Layer map[string][]byte

// Data returns n bytes of deterministic, incompressible content for seed, so
// that layers have real sizes after compression and differ by seed.
func Data(seed string, n int) []byte {
	out := make([]byte, 0, n+sha256.Size)
	var ctr [8]byte
	for i := uint64(0); len(out) < n; i++ {
		binary.LittleEndian.PutUint64(ctr[:], i)
		sum := sha256.Sum256(append([]byte(seed), ctr[:]...))
		out = append(out, sum[:]...)
	}
	return out[:n]
}

// Busybox returns a state holding busybox at /bin/busybox with its applets
// linked in /bin, and the local mount the state reads busybox from. It fails
// the test when busybox-static is not installed.
func Busybox(t *testing.T) (llb.State, map[string]fsutil.FS) {
	t.Helper()
	dt, err := os.ReadFile(BusyboxPath)
	require.NoError(t, err, "a static busybox is needed at %s: apt-get install busybox-static", BusyboxPath)
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "busybox"), dt, 0o755))
	fs, err := fsutil.NewFS(dir)
	require.NoError(t, err)

	st := llb.Scratch().
		File(llb.Copy(llb.Local(busyboxLocal), "busybox", "/bin/busybox", &llb.CopyInfo{CreateDestPath: true})).
		Run(llb.Args([]string{"/bin/busybox", "--install", "-s", "/bin"}), llb.WithCustomName("install busybox applets")).
		Root()
	return st, map[string]fsutil.FS{busyboxLocal: fs}
}

// WithLayers adds one layer per element of layers on top of st.
func WithLayers(st llb.State, layers ...Layer) llb.State {
	for i, l := range layers {
		paths := slices.Sorted(func(yield func(string) bool) {
			for p := range l {
				if !yield(p) {
					return
				}
			}
		})
		var fa *llb.FileAction
		for _, p := range paths {
			mk := llb.Mkdir(filepath.Dir(p), 0o755, llb.WithParents(true))
			if fa == nil {
				fa = mk
			} else {
				fa = fa.Mkdir(filepath.Dir(p), 0o755, llb.WithParents(true))
			}
			fa = fa.Mkfile(p, 0o644, l[p])
		}
		if fa != nil {
			st = st.File(fa, llb.WithCustomNamef("generated layer %d", i+1))
		}
	}
	return st
}

// Push builds busybox plus layers as an image and pushes it to ref, a
// repository on a loopback registry (integration.Sandbox.NewRegistry).
func Push(ctx context.Context, t *testing.T, c *client.Client, ref string, layers ...Layer) {
	t.Helper()
	st, locals := Busybox(t)
	def, err := WithLayers(st, layers...).Marshal(ctx)
	require.NoError(t, err)
	_, err = c.Solve(ctx, def, client.SolveOpt{
		LocalMounts: locals,
		Exports: []client.ExportEntry{{
			Type:  client.ExporterImage,
			Attrs: map[string]string{"name": ref, "push": "true"},
		}},
	}, nil)
	require.NoError(t, errors.Wrapf(err, "push test image %s", ref))
}

// Files flattens layers into the files an image built from them holds, the
// upper layer winning.
func Files(layers ...Layer) map[string][]byte {
	out := map[string][]byte{}
	for _, l := range layers {
		for p, dt := range l {
			out[p] = dt
		}
	}
	return out
}

// SmallLayers returns n layers of one file each, size bytes, under /data.
func SmallLayers(n, size int) []Layer {
	layers := make([]Layer, n)
	for i := range layers {
		p := fmt.Sprintf("/data/layer%d", i+1)
		layers[i] = Layer{p: Data(p, size)}
	}
	return layers
}
