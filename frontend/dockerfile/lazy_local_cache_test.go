package dockerfile_test

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lazylocal/buildkit/util/testutil/cachetest"
	"github.com/lazylocal/buildkit/util/testutil/testimage"
	"github.com/moby/buildkit/client"
	"github.com/moby/buildkit/identity"
	"github.com/moby/buildkit/util/testutil/integration"
	"github.com/moby/buildkit/util/testutil/workers"
	ocispecs "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/pkg/errors"
	"github.com/stretchr/testify/require"
	"github.com/tonistiigi/fsutil"
)

func init() {
	workers.InitOCIWorker()
}

// TestLazyLocalCacheDockerfile runs the user's scenario through the
// Dockerfile frontend against the buildkitd in PATH.
func TestLazyLocalCacheDockerfile(t *testing.T) {
	cachetest.RequireDeps(t)
	integration.Run(t, integration.TestFuncs(
		testLazyLocalCacheMultiStageRebuild,
	))
}

const seedDockerfile = `
FROM %[1]s AS deps
RUN sha256sum /data/* > /deps.txt

FROM %[1]s
COPY --from=deps /deps.txt /deps.txt
WORKDIR /src
COPY . ./
RUN cat app.txt /deps.txt > /result.txt
`

// The seed scenario: a multi-stage build with COPY --from, cache exported
// with mode=max, a code change, and a rebuild on an empty daemon importing
// the cache with lazy=true. The stage the change does not touch comes from
// cache, and the image has the new code and the right layers.
func testLazyLocalCacheMultiStageRebuild(t *testing.T, sb integration.Sandbox) {
	c := cachetest.NewClient(t, sb)
	ref := cachetest.NewRegistry(t, sb) + "/lazy-local-cache/dockerfile-base-" + identity.NewID() + ":latest"
	layers := testimage.SmallLayers(3, 128<<10)
	testimage.Push(sb.Context(), t, c, ref, layers...)
	files := testimage.Files(layers...)

	ctxDir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(ctxDir, "Dockerfile"), fmt.Appendf(nil, seedDockerfile, ref), 0o644))
	cacheDir := filepath.Join(t.TempDir(), "cache")
	build := func(app string, importAttrs map[string]string) (*cachetest.Progress, string, string) {
		require.NoError(t, os.WriteFile(filepath.Join(ctxDir, "app.txt"), []byte(app), 0o644))
		fs, err := fsutil.NewFS(ctxDir)
		require.NoError(t, err)
		out := t.TempDir()
		ociTar := filepath.Join(t.TempDir(), "image.tar")
		f, err := os.Create(ociTar)
		require.NoError(t, err)
		opt := client.SolveOpt{
			Frontend:      "dockerfile.v0",
			FrontendAttrs: map[string]string{},
			LocalMounts:   map[string]fsutil.FS{"context": fs, "dockerfile": fs},
			CacheExports:  []client.CacheOptionsEntry{{Type: "local", Attrs: map[string]string{"dest": cacheDir, "mode": "max"}}},
			Exports: []client.ExportEntry{
				{Type: client.ExporterLocal, OutputDir: out},
				{Type: client.ExporterOCI, Output: func(map[string]string) (io.WriteCloser, error) { return f, nil }},
			},
		}
		if importAttrs != nil {
			opt.CacheImports = []client.CacheOptionsEntry{{Type: "local", Attrs: importAttrs}}
		}
		ch, p := cachetest.WatchProgress()
		_, err = c.Solve(sb.Context(), nil, opt, ch)
		require.NoError(t, err)
		return p, out, ociTar
	}

	_, _, seedTar := build("v1\n", nil)
	cachetest.PruneAll(t, c, sb)

	p, out, ociTar := build("v2\n", map[string]string{"src": cacheDir, "lazy": "true"})
	require.True(t, p.Cached(t, "RUN sha256sum /data/*"), "the deps stage comes from the imported cache")
	require.False(t, p.Cached(t, "RUN cat app.txt /deps.txt"), "the step after the change runs")

	var deps strings.Builder
	for i := 1; i <= 3; i++ {
		f := fmt.Sprintf("/data/layer%d", i)
		fmt.Fprintf(&deps, "%x  %s\n", sha256.Sum256(files[f]), f)
	}
	for path, want := range map[string]string{
		"result.txt":  "v2\n" + deps.String(),
		"deps.txt":    deps.String(),
		"src/app.txt": "v2\n",
	} {
		got, err := os.ReadFile(filepath.Join(out, path))
		require.NoError(t, err, path)
		require.Equal(t, want, string(got), path)
	}
	for path, want := range files {
		got, err := os.ReadFile(filepath.Join(out, path))
		require.NoError(t, err, path)
		require.Equal(t, want, got, path)
	}

	// Same base layers and the same number of layers as the cold build's
	// image; only the layers after the change differ.
	seed, rebuilt := imageLayers(t, seedTar), imageLayers(t, ociTar)
	require.Len(t, rebuilt, len(seed))
	baseLayers := len(seed) - 4 // COPY --from, WORKDIR, COPY, RUN
	for i := range baseLayers {
		require.Equal(t, seed[i].Digest, rebuilt[i].Digest, "base layer %d", i)
	}
	require.NotEqual(t, seed[len(seed)-1].Digest, rebuilt[len(rebuilt)-1].Digest)
}

// imageLayers reads the layers of the single image in an OCI layout tarball.
func imageLayers(t *testing.T, path string) []ocispecs.Descriptor {
	t.Helper()
	dt, err := os.ReadFile(path)
	require.NoError(t, err)
	blobs := map[string][]byte{}
	tr := tar.NewReader(bytes.NewReader(dt))
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		require.NoError(t, err)
		b, err := io.ReadAll(tr)
		require.NoError(t, err)
		blobs[h.Name] = b
	}
	var idx ocispecs.Index
	require.NoError(t, json.Unmarshal(blobs["index.json"], &idx))
	require.Len(t, idx.Manifests, 1)
	var m ocispecs.Manifest
	require.NoError(t, json.Unmarshal(blobs["blobs/sha256/"+idx.Manifests[0].Digest.Encoded()], &m))
	for _, l := range m.Layers {
		require.Contains(t, blobs, "blobs/sha256/"+l.Digest.Encoded(), "layer %s in the tarball", l.Digest)
	}
	return m.Layers
}
