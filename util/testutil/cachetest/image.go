package cachetest

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"path/filepath"
	"slices"

	"github.com/moby/buildkit/client/llb"
)

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

// Image returns busybox:latest plus one layer per element of layers: a base
// image for a test to push to the sandbox's registry.
func Image(layers ...Layer) llb.State {
	return WithLayers(llb.Image("busybox:latest"), layers...)
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
