package lazytest

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/moby/buildkit/client"
	"github.com/moby/buildkit/session"
	sessioncontent "github.com/moby/buildkit/session/content"
	"github.com/moby/buildkit/util/testutil/integration"
	"github.com/stretchr/testify/require"
	"github.com/tonistiigi/fsutil"
)

func init() {
	tests = append(tests,
		testDockerfileMultiStageRebuild,
		testDockerfileLinkRebuild,
	)
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
// layers, so a lazy rebuild reads none of them.
const linkDockerfile = `
FROM %[1]s AS deps
RUN sha256sum /data/* > /deps.txt

FROM %[1]s
COPY --from=deps /deps.txt /deps.txt
COPY --link app.txt /src/
`

// dockerfileScenario is a base image in the sandbox registry, a context
// directory holding a Dockerfile and app.txt, and a cache directory, built
// by the daemon's builtin Dockerfile frontend.
type dockerfileScenario struct {
	c        *client.Client
	sb       integration.Sandbox
	files    map[string][]byte
	ctxDir   string
	cacheDir string
}

func newDockerfileScenario(t *testing.T, sb integration.Sandbox, dockerfile string) *dockerfileScenario {
	t.Helper()
	c := newClient(t, sb)
	layers := smallLayers(dataLayers, layerSize)
	ref := pushBase(t, sb, c, layers)
	s := &dockerfileScenario{c: c, sb: sb, files: flatten(layers...), ctxDir: t.TempDir(), cacheDir: filepath.Join(t.TempDir(), "cache")}
	require.NoError(t, os.WriteFile(filepath.Join(s.ctxDir, "Dockerfile"), fmt.Appendf(nil, dockerfile, ref), 0o644))
	return s
}

// seed builds app cold, exports the cache with mode=max, and prunes the
// daemon back to empty. It returns the image as an OCI tarball.
func (s *dockerfileScenario) seed(t *testing.T, app string) string {
	t.Helper()
	opt, ociTar := s.opt(t, app, "")
	opt.CacheExports = []client.CacheOptionsEntry{{Type: "local", Attrs: map[string]string{"dest": s.cacheDir, "mode": "max"}}}
	_, err := s.c.Solve(s.sb.Context(), nil, opt, nil)
	require.NoError(t, err)
	pruneAll(t, s.c, s.sb)
	return ociTar
}

// rebuild builds app importing the cache with lazy=true through a counting
// store, as the frontend passes imports on (the cache-imports attribute),
// and exports the filesystem to out when it is set.
func (s *dockerfileScenario) rebuild(t *testing.T, app, out string) (*progress, *countingStore, string) {
	t.Helper()
	opt, ociTar := s.opt(t, app, out)
	desc, _ := cacheManifest(t, s.cacheDir)
	imports, err := json.Marshal([]client.CacheOptionsEntry{{Type: "local", Attrs: map[string]string{
		"src": s.cacheDir, "digest": desc.Digest.String(), "lazy": "true",
	}}})
	require.NoError(t, err)
	opt.FrontendAttrs["cache-imports"] = string(imports)
	store := newCountingStore(t, s.cacheDir)
	opt.Session = []session.Attachable{sessioncontent.NewAttachable(map[string]content.Store{"local:" + s.cacheDir: store})}
	ch, p, wait := watch()
	_, err = s.c.Solve(s.sb.Context(), nil, opt, ch)
	wait()
	require.NoError(t, err)
	return p, store, ociTar
}

func (s *dockerfileScenario) opt(t *testing.T, app, out string) (client.SolveOpt, string) {
	t.Helper()
	require.NoError(t, os.WriteFile(filepath.Join(s.ctxDir, "app.txt"), []byte(app), 0o644))
	fs, err := fsutil.NewFS(s.ctxDir)
	require.NoError(t, err)
	ociTar := filepath.Join(t.TempDir(), "image.tar")
	opt := client.SolveOpt{
		Frontend:      "dockerfile.v0",
		FrontendAttrs: map[string]string{},
		LocalMounts:   map[string]fsutil.FS{"context": fs, "dockerfile": fs},
		Exports:       []client.ExportEntry{{Type: client.ExporterOCI, Output: fileWriter(t, ociTar)}},
	}
	if out != "" {
		opt.Exports = append(opt.Exports, client.ExportEntry{Type: client.ExporterLocal, OutputDir: out})
	}
	return opt, ociTar
}

// depsSums is what the deps stage writes to /deps.txt.
func (s *dockerfileScenario) depsSums() string {
	var deps strings.Builder
	for i := 1; i <= dataLayers; i++ {
		f := fmt.Sprintf("/data/layer%d", i)
		fmt.Fprintf(&deps, "%x  %s\n", sha256.Sum256(s.files[f]), f)
	}
	return deps.String()
}

// A rebuild whose changed step is COPY --link, importing lazily into an
// empty daemon, reads no layer and yields the image with the new file on
// the unchanged base layers.
func testDockerfileLinkRebuild(t *testing.T, sb integration.Sandbox) {
	s := newDockerfileScenario(t, sb, linkDockerfile)
	seedTar := s.seed(t, "v1\n")

	p, store, ociTar := s.rebuild(t, "v2\n", "")
	require.True(t, p.cached(t, "[deps 2/2] RUN sha256sum /data/* > /deps.txt"))
	require.False(t, p.cached(t, "[stage-1 3/3] COPY --link app.txt /src/"))
	// The image export reads every layer to write it into the tarball, so
	// the store's reads cannot tell a mount; the extraction statuses can.
	require.Empty(t, p.extracted(), "nothing mounts the imported layers")
	_, m := cacheManifest(t, s.cacheDir)
	reads := store.layerReads(m)
	for _, l := range ociLayers(t, ociTar) {
		if hasLayer(m, l.Digest) {
			require.Contains(t, reads, l.Digest, "the export read image layer %s through the build's own session", l.Digest)
		}
	}

	seed, rebuilt := ociLayers(t, seedTar), ociLayers(t, ociTar)
	require.Len(t, rebuilt, len(seed))
	for i := range len(seed) - 1 {
		require.Equal(t, seed[i].Digest, rebuilt[i].Digest, "layer %d", i)
	}
	last := layerFiles(t, ociTar, rebuilt[len(rebuilt)-1])
	require.Equal(t, "v2\n", string(last["src/app.txt"]))
	deps := layerFiles(t, ociTar, rebuilt[len(rebuilt)-2])
	require.Equal(t, s.depsSums(), string(deps["deps.txt"]))
}

// The report's scenario: a multi-stage build with COPY --from, cache
// exported with mode=max, a code change, and a rebuild on an empty daemon
// importing the cache with lazy=true. The stage the change does not touch
// comes from cache, and the image has the new code and the right layers.
func testDockerfileMultiStageRebuild(t *testing.T, sb integration.Sandbox) {
	s := newDockerfileScenario(t, sb, seedDockerfile)
	seedTar := s.seed(t, "v1\n")

	out := t.TempDir()
	p, _, ociTar := s.rebuild(t, "v2\n", out)
	require.True(t, p.cached(t, "[deps 2/2] RUN sha256sum /data/* > /deps.txt"), "the deps stage comes from the imported cache")
	require.False(t, p.cached(t, "[stage-1 5/5] RUN cat app.txt /deps.txt > /result.txt"), "the step after the change runs")

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

	// The same base layers and number of layers as the cold build's image;
	// only the layers after the change differ.
	seed, rebuilt := ociLayers(t, seedTar), ociLayers(t, ociTar)
	require.Len(t, rebuilt, len(seed))
	baseLayers := len(seed) - 4 // COPY --from, WORKDIR, COPY, RUN
	for i := range baseLayers {
		require.Equal(t, seed[i].Digest, rebuilt[i].Digest, "base layer %d", i)
	}
	require.NotEqual(t, seed[len(seed)-1].Digest, rebuilt[len(rebuilt)-1].Digest)
}
