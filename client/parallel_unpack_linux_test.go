package client

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/platforms"
	"github.com/moby/buildkit/client/llb"
	"github.com/moby/buildkit/util/testutil/integration"
	"github.com/moby/buildkit/util/testutil/workers"
	digest "github.com/opencontainers/go-digest"
	ocispecsversioned "github.com/opencontainers/image-spec/specs-go"
	ocispecs "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/pkg/errors"
	"github.com/stretchr/testify/require"
)

// TestParallelUnpackIntegration runs the pull tests of the parallel apply
// with parallel-unpack on and off: the tree is the same.
func TestParallelUnpackIntegration(t *testing.T) {
	integration.Run(t, integration.TestFuncs(testPullImplicitParentDirs),
		integration.WithMirroredImages(integration.OfficialImages("busybox:latest")),
		integration.WithMatrix("unpack", map[string]any{
			"parallel":   parallelUnpackConfig{},
			"sequential": nil,
		}))
}

// parallelUnpackConfig turns parallel-unpack on in buildkitd.toml. A
// rootless daemon logs that it cannot and applies the layers one at a time.
type parallelUnpackConfig struct{}

func (parallelUnpackConfig) UpdateConfigFile(in string) (string, func() error) {
	return in + "\n[worker.oci]\n  parallel-unpack = true\n", nil
}

// testPullImplicitParentDirs pulls an image whose layers do not list the
// directories their files are in, over whiteouts, an opaque directory, a
// directory replaced by a file and hard links, and checks the tree as a
// sequential apply of the layers gives it. The cases whose result differs
// between a rootful apply and a rootless one through a mounted overlay (a
// file under a directory that a lower layer replaced by a file, or under a
// symbolic link) are in cache's unit tests, which are rootful.
func testPullImplicitParentDirs(t *testing.T, sb integration.Sandbox) {
	workers.CheckFeatureCompat(t, sb, workers.FeatureDirectPush)
	requiresLinux(t)
	ctx := sb.Context()

	c, err := New(ctx, sb.Address())
	require.NoError(t, err)
	defer c.Close()

	registry, err := sb.NewRegistry()
	if errors.Is(err, integration.ErrRequirements) {
		t.Skip(err.Error())
	}
	require.NoError(t, err)
	target := registry + "/buildkit/implicit-parents:latest"

	dir := func(name string, mode int64, uid, gid int) *tar.Header {
		return &tar.Header{Name: name + "/", Typeflag: tar.TypeDir, Mode: mode, Uid: uid, Gid: gid}
	}
	reg := func(name string) *tar.Header {
		return &tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0644, Size: int64(len(name))}
	}
	lnk := func(name string, typ byte, target string) *tar.Header {
		return &tar.Header{Name: name, Typeflag: typ, Linkname: target, Mode: 0777}
	}
	layers := [][]*tar.Header{{
		dir("tmp", 01777, 0, 0),
		dir("srv", 02775, 0, 50),
		dir("home", 0755, 0, 0),
		dir("home/u", 0700, 1000, 1000),
		dir("gone", 0755, 0, 0), reg("gone/f"),
		dir("opq", 0710, 9, 9), reg("opq/old"),
		dir("d", 0700, 0, 0), reg("d/x"),
		dir("usr", 0751, 3, 3),
		dir("usr/lib", 0700, 5, 5),
	}, {
		reg("tmp/x"),
		reg("srv/a/b/f"),
		reg("home/u/f"),
		reg("gone/.wh.f"),
		reg("opq/.wh..wh..opq"), reg("opq/new"),
		reg("d"),
		reg("h/f"), lnk("h/g", tar.TypeLink, "h/f"),
	}, {
		reg("srv/a/c"),
		reg("home/u/g/h"),
	}}

	resolver := docker.NewResolver(docker.ResolverOptions{PlainHTTP: true})
	pusher, err := resolver.Pusher(ctx, target)
	require.NoError(t, err)
	ingester, ok := pusher.(content.Ingester)
	require.True(t, ok)
	push := func(mediaType string, dt []byte) ocispecs.Descriptor {
		desc := ocispecs.Descriptor{MediaType: mediaType, Digest: digest.FromBytes(dt), Size: int64(len(dt))}
		require.NoError(t, content.WriteBlob(ctx, ingester, desc.Digest.String(), bytes.NewReader(dt), desc))
		return desc
	}

	img := ocispecs.Image{Platform: platforms.DefaultSpec(), RootFS: ocispecs.RootFS{Type: "layers"}}
	manifest := ocispecs.Manifest{Versioned: ocispecsversioned.Versioned{SchemaVersion: 2}, MediaType: ocispecs.MediaTypeImageManifest}
	for _, l := range layers {
		var buf bytes.Buffer
		diffID := digest.SHA256.Digester()
		gz := gzip.NewWriter(&buf)
		tw := tar.NewWriter(io.MultiWriter(gz, diffID.Hash()))
		for _, h := range l {
			require.NoError(t, tw.WriteHeader(h))
			if h.Typeflag == tar.TypeReg {
				_, err := tw.Write([]byte(h.Name))
				require.NoError(t, err)
			}
		}
		require.NoError(t, tw.Close())
		require.NoError(t, gz.Close())
		manifest.Layers = append(manifest.Layers, push(ocispecs.MediaTypeImageLayerGzip, buf.Bytes()))
		img.RootFS.DiffIDs = append(img.RootFS.DiffIDs, diffID.Digest())
	}
	dt, err := json.Marshal(img)
	require.NoError(t, err)
	manifest.Config = push(ocispecs.MediaTypeImageConfig, dt)
	dt, err = json.Marshal(manifest)
	require.NoError(t, err)
	push(ocispecs.MediaTypeImageManifest, dt)

	run := llb.Image("busybox:latest").Run(
		llb.Shlex(`sh -c 'cd /img && stat -c "%n %a %u:%g %F" tmp srv srv/a srv/a/b home/u home/u/g opq d usr/lib > /out/stat && stat -c "%n %h" h/g >> /out/stat && ls -A gone opq srv/a >> /out/stat'`),
	)
	run.AddMount("/img", llb.Image(target), llb.Readonly)
	out := run.AddMount("/out", llb.Scratch())
	def, err := out.Marshal(ctx)
	require.NoError(t, err)
	destDir := t.TempDir()
	_, err = c.Solve(ctx, def, SolveOpt{
		Exports: []ExportEntry{{Type: ExporterLocal, OutputDir: destDir}},
	}, nil)
	require.NoError(t, err)

	dt, err = os.ReadFile(filepath.Join(destDir, "stat"))
	require.NoError(t, err)
	require.Equal(t, strings.Join([]string{
		"tmp 1777 0:0 directory",
		"srv 2775 0:50 directory",
		"srv/a 755 0:50 directory",
		"srv/a/b 755 0:0 directory",
		"home/u 700 1000:1000 directory",
		"home/u/g 755 0:0 directory",
		"opq 710 9:9 directory",
		"d 644 0:0 regular file",
		"usr/lib 700 5:5 directory",
		"h/g 2",
		"gone:",
		"",
		"opq:",
		"new",
		"",
		"srv/a:",
		"b",
		"c",
		"",
	}, "\n"), string(dt))
}
