package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	ocispecs "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/pkg/errors"
)

// baseLayer is what one layer of the generated base image holds.
type baseLayer struct {
	Index int // 0: the busybox root file system; N: /opt/base/N
	Files int
	Bytes int64
}

// layerIndex tells, for a layer blob, which base layer it holds: by its
// diffID, so that a cache's zstd blob of a layer is known as well as the
// registry's gzip one.
type layerIndex struct {
	byDiffID map[string]baseLayer
	diffID   map[string]string // blob digest -> diffID
}

// indexBase reads the base image's manifest and config from the registry
// and counts what the generator put in each layer.
func (b *unpackBench) indexBase(ctx context.Context) error {
	ref := strings.TrimPrefix(b.base.Ref, b.s.Registry.Addr+"/")
	repo, tag, _ := strings.Cut(ref, ":")
	m, err := b.s.Registry.Manifest(ctx, repo, tag)
	if err != nil {
		return err
	}
	img, err := b.s.Registry.Config(ctx, repo, m)
	if err != nil {
		return err
	}
	if len(img.RootFS.DiffIDs) != len(m.Layers) {
		return errors.Errorf("%s: %d layers but %d diffIDs", b.base.Ref, len(m.Layers), len(img.RootFS.DiffIDs))
	}
	layers := make([]baseLayer, len(m.Layers))
	for i := range layers {
		layers[i].Index = i
	}
	for inImage, src := range b.base.Files {
		i := 0
		if rest, ok := strings.CutPrefix(inImage, "/opt/base/"); ok {
			n, _, _ := strings.Cut(rest, "/")
			if i, err = strconv.Atoi(n); err != nil || i >= len(layers) {
				return errors.Errorf("base image file %s: no layer %q", inImage, n)
			}
		}
		if fi, err := os.Stat(src); err == nil {
			layers[i].Files++
			layers[i].Bytes += fi.Size()
		}
	}
	b.layers = layerIndex{byDiffID: map[string]baseLayer{}, diffID: map[string]string{}}
	for i, l := range m.Layers {
		d := img.RootFS.DiffIDs[i].String()
		b.layers.byDiffID[d] = layers[i]
		b.layers.diffID[l.Digest.String()] = d
	}
	return nil
}

// indexCache learns the diffIDs of the layer blobs of a local cache
// directory from its manifests' containerd.io/uncompressed annotations.
func (b *unpackBench) indexCache(dir string) error {
	var idx ocispecs.Index
	if err := readJSON(filepath.Join(dir, "index.json"), &idx); err != nil {
		return err
	}
	for _, md := range idx.Manifests {
		var m ocispecs.Manifest
		if err := readJSON(filepath.Join(dir, "blobs", md.Digest.Algorithm().String(), md.Digest.Encoded()), &m); err != nil {
			return err
		}
		for _, l := range m.Layers {
			if d := l.Annotations["containerd.io/uncompressed"]; d != "" {
				b.layers.diffID[l.Digest.String()] = d
			}
		}
	}
	return nil
}

func readJSON(p string, v any) error {
	dt, err := os.ReadFile(p)
	if err != nil {
		return errors.WithStack(err)
	}
	return errors.Wrapf(json.Unmarshal(dt, v), "failed to decode %s", p)
}

// describe names a layer blob for the per-layer table: which base layer,
// how many files, how many MB uncompressed; "" for a layer of the build's
// own steps.
func (l layerIndex) describe(dgst string) string {
	bl, ok := l.byDiffID[l.diffID[dgst]]
	if !ok {
		return ""
	}
	return fmt.Sprintf("base %d: %d files, %.0f MB", bl.Index, bl.Files, float64(bl.Bytes)/1e6)
}
