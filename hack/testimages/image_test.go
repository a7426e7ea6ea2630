package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"io"
	"io/fs"
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	digest "github.com/opencontainers/go-digest"
	ocispecs "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/stretchr/testify/require"
)

func TestBuildLayer(t *testing.T) {
	entries := []entry{
		dir("bin", 0755),
		dir("tmp", 0777|fs.ModeSticky),
		file("bin/busybox", 0755, []byte("binary")),
		symlink("bin/sh", "/bin/busybox"),
	}
	l, err := buildLayer(entries)
	require.NoError(t, err)

	again, err := buildLayer(entries)
	require.NoError(t, err)
	require.Equal(t, l.gzip, again.gzip, "same entries must give the same blob")

	gz, err := gzip.NewReader(bytes.NewReader(l.gzip))
	require.NoError(t, err)
	tarData, err := io.ReadAll(gz)
	require.NoError(t, err)
	require.Equal(t, l.tar, tarData)
	require.Equal(t, digest.FromBytes(tarData), l.diffID)

	type got struct {
		typ      byte
		mode     int64
		linkname string
		data     string
	}
	want := map[string]got{
		"bin/":        {typ: tar.TypeDir, mode: 0755},
		"tmp/":        {typ: tar.TypeDir, mode: 0o1777},
		"bin/busybox": {typ: tar.TypeReg, mode: 0755, data: "binary"},
		"bin/sh":      {typ: tar.TypeSymlink, mode: 0777, linkname: "/bin/busybox"},
	}
	tr := tar.NewReader(bytes.NewReader(tarData))
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		require.NoError(t, err)
		data, err := io.ReadAll(tr)
		require.NoError(t, err)
		require.Equal(t, 0, hdr.Uid, hdr.Name)
		require.Equal(t, want[hdr.Name], got{typ: hdr.Typeflag, mode: hdr.Mode, linkname: hdr.Linkname, data: string(data)}, hdr.Name)
		delete(want, hdr.Name)
	}
	require.Empty(t, want, "entries missing from the tar")
}

func TestImageWrite(t *testing.T) {
	ctx := context.Background()
	l, err := buildLayer([]entry{file("a", 0644, []byte("a"))})
	require.NoError(t, err)

	for _, tc := range []struct {
		name       string
		img        image
		mediaTypes []string
		urls       [][]string
		blobs      [][]byte // layer blobs, when they must be the plain tars
	}{
		{
			name:       "nolayers",
			img:        image{name: "test:nolayers"},
			mediaTypes: []string{},
			urls:       [][]string{},
		},
		{
			name:       "oci",
			img:        image{name: "test:oci", layers: []layer{l}},
			mediaTypes: []string{ocispecs.MediaTypeImageLayerGzip},
			urls:       [][]string{nil},
		},
		{
			name:       "foreign",
			img:        image{name: "test:foreign", layers: []layer{l, l}, foreign: map[int][]string{0: {foreignURL}}, docker: true},
			mediaTypes: []string{images.MediaTypeDockerSchema2LayerForeignGzip, images.MediaTypeDockerSchema2LayerGzip},
			urls:       [][]string{{foreignURL}, nil},
		},
		{
			name:       "foreign-uncompressed",
			img:        image{name: "test:foreign", layers: []layer{l, l}, foreign: map[int][]string{0: {foreignURL}}, docker: true, uncompressed: true},
			mediaTypes: []string{images.MediaTypeDockerSchema2LayerForeign, images.MediaTypeDockerSchema2Layer},
			urls:       [][]string{{foreignURL}, nil},
			blobs:      [][]byte{l.tar, l.tar},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			buf, desc, err := tc.img.write(ctx)
			require.NoError(t, err)

			var mfst ocispecs.Manifest
			dt, err := content.ReadBlob(ctx, buf, desc)
			require.NoError(t, err)
			require.NoError(t, json.Unmarshal(dt, &mfst))
			require.Equal(t, desc.MediaType, mfst.MediaType)
			require.NotNil(t, mfst.Layers, "layers must be [] rather than null")

			mediaTypes := []string{}
			urls := [][]string{}
			for _, ld := range mfst.Layers {
				mediaTypes = append(mediaTypes, ld.MediaType)
				urls = append(urls, ld.URLs)
				_, err := buf.Info(ctx, ld.Digest)
				require.NoError(t, err, "layer blob must be stored")
			}
			require.Equal(t, tc.mediaTypes, mediaTypes)
			require.Equal(t, tc.urls, urls)
			for i, want := range tc.blobs {
				dt, err := content.ReadBlob(ctx, buf, mfst.Layers[i])
				require.NoError(t, err)
				require.Equal(t, want, dt)
			}

			var cfg ocispecs.Image
			dt, err = content.ReadBlob(ctx, buf, mfst.Config)
			require.NoError(t, err)
			require.NoError(t, json.Unmarshal(dt, &cfg))
			require.Len(t, cfg.RootFS.DiffIDs, len(tc.img.layers))
			for _, d := range cfg.RootFS.DiffIDs {
				require.Equal(t, l.diffID, d)
			}
		})
	}
}
