package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"io/fs"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/platforms"
	"github.com/moby/buildkit/util/contentutil"
	digest "github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/specs-go"
	ocispecs "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/pkg/errors"
)

// epoch is the time stamped on every entry and config, so that the same
// inputs always give the same digests and a rerun finds nothing to push.
var epoch = time.Unix(0, 0).UTC()

// entry is one file, directory or symlink of a layer.
type entry struct {
	path     string
	mode     fs.FileMode // permission bits plus fs.ModeDir or fs.ModeSymlink
	data     []byte
	linkname string
}

func dir(path string, perm fs.FileMode) entry {
	return entry{path: path, mode: fs.ModeDir | perm}
}

func file(path string, perm fs.FileMode, data []byte) entry {
	return entry{path: path, mode: perm, data: data}
}

func symlink(path, target string) entry {
	return entry{path: path, mode: fs.ModeSymlink | 0777, linkname: target}
}

// layer is a built layer: the digest of its tar goes into the image config;
// the registry stores its gzip blob, or the tar itself for an uncompressed
// image.
type layer struct {
	diffID digest.Digest
	tar    []byte
	gzip   []byte
}

// buildLayer writes entries, in the order given, as a gzip-compressed tar
// owned by root.
func buildLayer(entries []entry) (layer, error) {
	var tarBuf bytes.Buffer
	tw := tar.NewWriter(&tarBuf)
	for _, e := range entries {
		hdr := &tar.Header{
			Name:    e.path,
			Mode:    int64(e.mode.Perm()),
			ModTime: epoch,
			Format:  tar.FormatPAX,
		}
		if e.mode&fs.ModeSticky != 0 {
			hdr.Mode |= 0o1000 // c_ISVTX
		}
		switch {
		case e.mode.IsDir():
			hdr.Typeflag = tar.TypeDir
			hdr.Name += "/"
		case e.mode&fs.ModeSymlink != 0:
			hdr.Typeflag = tar.TypeSymlink
			hdr.Linkname = e.linkname
		default:
			hdr.Typeflag = tar.TypeReg
			hdr.Size = int64(len(e.data))
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return layer{}, errors.Wrapf(err, "failed to write tar header for %s", e.path)
		}
		if _, err := tw.Write(e.data); err != nil {
			return layer{}, errors.Wrapf(err, "failed to write %s", e.path)
		}
	}
	if err := tw.Close(); err != nil {
		return layer{}, errors.WithStack(err)
	}

	var gzBuf bytes.Buffer
	gw, err := gzip.NewWriterLevel(&gzBuf, gzip.BestSpeed)
	if err != nil {
		return layer{}, errors.WithStack(err)
	}
	if _, err := gw.Write(tarBuf.Bytes()); err != nil {
		return layer{}, errors.WithStack(err)
	}
	if err := gw.Close(); err != nil {
		return layer{}, errors.WithStack(err)
	}
	return layer{diffID: digest.FromBytes(tarBuf.Bytes()), tar: tarBuf.Bytes(), gzip: gzBuf.Bytes()}, nil
}

// image is a single-platform image to lay into the mirror.
type image struct {
	// name is the repository and tag inside the mirror registry, as
	// integration.WithMirroredImages keys it (library/busybox:latest).
	name   string
	config ocispecs.ImageConfig
	layers []layer
	// foreign marks, by index, layers stored as Docker foreign
	// (non-distributable) layers whose descriptors carry these URLs.
	foreign map[int][]string
	// docker selects Docker schema2 media types instead of OCI ones; a
	// foreign layer only exists in the Docker media types.
	docker bool
	// uncompressed stores layers as plain tars.
	uncompressed bool
}

// write stores the image's blobs, config and manifest in a new buffer and
// returns the manifest's descriptor.
func (img image) write(ctx context.Context) (contentutil.Buffer, ocispecs.Descriptor, error) {
	buf := contentutil.NewBuffer()
	put := func(mediaType string, data []byte) (ocispecs.Descriptor, error) {
		desc := ocispecs.Descriptor{MediaType: mediaType, Digest: digest.FromBytes(data), Size: int64(len(data))}
		if err := content.WriteBlob(ctx, buf, desc.Digest.String(), bytes.NewReader(data), desc); err != nil {
			return ocispecs.Descriptor{}, errors.Wrapf(err, "failed to store %s of %s", mediaType, img.name)
		}
		return desc, nil
	}

	mtManifest, mtConfig, mtLayer := ocispecs.MediaTypeImageManifest, ocispecs.MediaTypeImageConfig, ocispecs.MediaTypeImageLayerGzip
	if img.docker {
		mtManifest, mtConfig, mtLayer = images.MediaTypeDockerSchema2Manifest, images.MediaTypeDockerSchema2Config, images.MediaTypeDockerSchema2LayerGzip
	}

	created := epoch
	cfg := ocispecs.Image{
		Created:  &created,
		Platform: platforms.DefaultSpec(),
		Config:   img.config,
		RootFS:   ocispecs.RootFS{Type: "layers", DiffIDs: []digest.Digest{}},
		History:  []ocispecs.History{},
	}
	mfst := ocispecs.Manifest{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: mtManifest,
		Layers:    []ocispecs.Descriptor{},
	}
	for i, l := range img.layers {
		cfg.RootFS.DiffIDs = append(cfg.RootFS.DiffIDs, l.diffID)
		cfg.History = append(cfg.History, ocispecs.History{Created: &created, CreatedBy: "hack/testimages"})
		mt, blob := mtLayer, l.gzip
		if img.uncompressed {
			mt, blob = ocispecs.MediaTypeImageLayer, l.tar
			if img.docker {
				mt = images.MediaTypeDockerSchema2Layer
			}
		}
		if _, ok := img.foreign[i]; ok {
			mt = images.MediaTypeDockerSchema2LayerForeign
			if !img.uncompressed {
				mt = images.MediaTypeDockerSchema2LayerForeignGzip
			}
		}
		desc, err := put(mt, blob)
		if err != nil {
			return nil, ocispecs.Descriptor{}, err
		}
		desc.URLs = img.foreign[i]
		mfst.Layers = append(mfst.Layers, desc)
	}

	cfgJSON, err := json.Marshal(cfg)
	if err != nil {
		return nil, ocispecs.Descriptor{}, errors.WithStack(err)
	}
	if mfst.Config, err = put(mtConfig, cfgJSON); err != nil {
		return nil, ocispecs.Descriptor{}, err
	}
	mfstJSON, err := json.Marshal(mfst)
	if err != nil {
		return nil, ocispecs.Descriptor{}, errors.WithStack(err)
	}
	desc, err := put(mtManifest, mfstJSON)
	if err != nil {
		return nil, ocispecs.Descriptor{}, err
	}
	return buf, desc, nil
}
