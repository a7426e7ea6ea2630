package dockerfile_test

import (
	"crypto/sha256"
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
	"github.com/stretchr/testify/require"
	"github.com/tonistiigi/fsutil"
)

// lazyLocalCacheDockerfileTests lists the lazy local cache integration tests, one behaviour each.
var lazyLocalCacheDockerfileTests = []func(t *testing.T, sb integration.Sandbox){
	testLazyLocalCacheMultiStageRebuild,
	testLazyLocalCacheLinkRebuild,
}

// seedDockerfile is the report's Dockerfile: the changed COPY mounts its
// parent, and so does the RUN after it.
const seedDockerfile = `
FROM %[1]s AS deps
RUN sha256sum /data/* > /deps.txt

FROM %[1]s
COPY --from=deps /deps.txt /deps.txt
WORKDIR /src
COPY . ./
RUN cat app.txt /deps.txt > /result.txt
`

// linkDockerfile changes only a COPY --link: nothing mounts the imported
// layers, so a lazy rebuild extracts none of them.
const linkDockerfile = `
FROM %[1]s AS deps
RUN sha256sum /data/* > /deps.txt

FROM %[1]s
COPY --from=deps /deps.txt /deps.txt
COPY --link app.txt /src/
`

// dockerfileScenario is a base image in the sandbox registry, a context
// directory holding a Dockerfile and app.txt, and a cache directory.
type dockerfileScenario struct {
	c        *client.Client
	sb       integration.Sandbox
	files    map[string][]byte
	ctxDir   string
	cacheDir string
}

func newDockerfileScenario(t *testing.T, sb integration.Sandbox, dockerfile string) *dockerfileScenario {
	c := cachetest.NewClient(t, sb)
	ref := cachetest.NewRegistry(t, sb) + "/lazy-local-cache/dockerfile-base-" + identity.NewID() + ":latest"
	layers := testimage.SmallLayers(3, 128<<10)
	testimage.Push(sb.Context(), t, c, ref, layers...)
	s := &dockerfileScenario{c: c, sb: sb, files: testimage.Files(layers...), ctxDir: t.TempDir(), cacheDir: filepath.Join(t.TempDir(), "cache")}
	require.NoError(t, os.WriteFile(filepath.Join(s.ctxDir, "Dockerfile"), fmt.Appendf(nil, dockerfile, ref), 0o644))
	return s
}

// build builds app with the cache exported (mode=max) and, when
// importAttrs is set, imported. It exports the image as an OCI tarball and,
// when out is set, the filesystem to out.
func (s *dockerfileScenario) build(t *testing.T, app string, importAttrs map[string]string, out string) (*cachetest.Progress, string) {
	require.NoError(t, os.WriteFile(filepath.Join(s.ctxDir, "app.txt"), []byte(app), 0o644))
	fs, err := fsutil.NewFS(s.ctxDir)
	require.NoError(t, err)
	ociTar := filepath.Join(t.TempDir(), "image.tar")
	f, err := os.Create(ociTar)
	require.NoError(t, err)
	opt := client.SolveOpt{
		Frontend:      "dockerfile.v0",
		FrontendAttrs: map[string]string{},
		LocalMounts:   map[string]fsutil.FS{"context": fs, "dockerfile": fs},
		CacheExports:  []client.CacheOptionsEntry{{Type: "local", Attrs: map[string]string{"dest": s.cacheDir, "mode": "max"}}},
		Exports:       []client.ExportEntry{{Type: client.ExporterOCI, Output: func(map[string]string) (io.WriteCloser, error) { return f, nil }}},
	}
	if out != "" {
		opt.Exports = append(opt.Exports, client.ExportEntry{Type: client.ExporterLocal, OutputDir: out})
	}
	if importAttrs != nil {
		opt.CacheImports = []client.CacheOptionsEntry{{Type: "local", Attrs: importAttrs}}
	}
	ch, p := cachetest.WatchProgress()
	_, err = s.c.Solve(s.sb.Context(), nil, opt, ch)
	require.NoError(t, err)
	return p, ociTar
}

// depsSums is what the deps stage writes to /deps.txt.
func (s *dockerfileScenario) depsSums() string {
	var deps strings.Builder
	for i := 1; i <= 3; i++ {
		f := fmt.Sprintf("/data/layer%d", i)
		fmt.Fprintf(&deps, "%x  %s\n", sha256.Sum256(s.files[f]), f)
	}
	return deps.String()
}

// A rebuild whose changed step is COPY --link, importing lazily into an
// empty daemon, extracts no layer and yields the image with the new file on
// the unchanged base layers.
func testLazyLocalCacheLinkRebuild(t *testing.T, sb integration.Sandbox) {
	s := newDockerfileScenario(t, sb, linkDockerfile)
	_, seedTar := s.build(t, "v1\n", nil, "")
	cachetest.PruneAll(t, s.c, sb)

	p, ociTar := s.build(t, "v2\n", map[string]string{"src": s.cacheDir, "lazy": "true"}, "")
	require.True(t, p.Cached(t, "RUN sha256sum /data/*"))
	require.False(t, p.Cached(t, "COPY --link app.txt /src/"))
	require.Zero(t, p.Extracted(), "nothing mounts the imported layers")

	seed, rebuilt := cachetest.OCILayers(t, seedTar), cachetest.OCILayers(t, ociTar)
	require.Len(t, rebuilt, len(seed))
	for i := range len(seed) - 1 {
		require.Equal(t, seed[i].Digest, rebuilt[i].Digest, "layer %d", i)
	}
	last := cachetest.LayerFiles(t, ociTar, rebuilt[len(rebuilt)-1])
	require.Equal(t, "v2\n", string(last["src/app.txt"]))
	deps := cachetest.LayerFiles(t, ociTar, rebuilt[len(rebuilt)-2])
	require.Equal(t, s.depsSums(), string(deps["deps.txt"]))
}

// The seed scenario: a multi-stage build with COPY --from, cache exported
// with mode=max, a code change, and a rebuild on an empty daemon importing
// the cache with lazy=true. The stage the change does not touch comes from
// cache, and the image has the new code and the right layers.
func testLazyLocalCacheMultiStageRebuild(t *testing.T, sb integration.Sandbox) {
	s := newDockerfileScenario(t, sb, seedDockerfile)
	_, seedTar := s.build(t, "v1\n", nil, "")
	cachetest.PruneAll(t, s.c, sb)

	out := t.TempDir()
	p, ociTar := s.build(t, "v2\n", map[string]string{"src": s.cacheDir, "lazy": "true"}, out)
	require.True(t, p.Cached(t, "RUN sha256sum /data/*"), "the deps stage comes from the imported cache")
	require.False(t, p.Cached(t, "RUN cat app.txt /deps.txt"), "the step after the change runs")

	for path, want := range map[string]string{
		"result.txt":  "v2\n" + s.depsSums(),
		"deps.txt":    s.depsSums(),
		"src/app.txt": "v2\n",
	} {
		got, err := os.ReadFile(filepath.Join(out, path))
		require.NoError(t, err, path)
		require.Equal(t, want, string(got), path)
	}
	for path, want := range s.files {
		got, err := os.ReadFile(filepath.Join(out, path))
		require.NoError(t, err, path)
		require.Equal(t, want, got, path)
	}

	// Same base layers and the same number of layers as the cold build's
	// image; only the layers after the change differ.
	seed, rebuilt := cachetest.OCILayers(t, seedTar), cachetest.OCILayers(t, ociTar)
	require.Len(t, rebuilt, len(seed))
	baseLayers := len(seed) - 4 // COPY --from, WORKDIR, COPY, RUN
	for i := range baseLayers {
		require.Equal(t, seed[i].Digest, rebuilt[i].Digest, "base layer %d", i)
	}
	require.NotEqual(t, seed[len(seed)-1].Digest, rebuilt[len(rebuilt)-1].Digest)
}
