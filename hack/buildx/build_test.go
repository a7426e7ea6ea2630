package buildx

import (
	"path/filepath"
	"regexp"
	"testing"

	"github.com/stretchr/testify/require"
)

// cachedDockerfile has three layers: the busybox, and one per RUN.
const cachedDockerfile = `FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "sh", "-c", "echo one > /one.txt"]
RUN ["/bin/busybox", "sh", "-c", "/bin/busybox cat /one.txt > /two.txt && echo two >> /two.txt"]
`

// TestBuildLazyCacheFrom builds a Dockerfile whose steps are all in a local
// cache, each time into a fresh daemon: with lazy=true nothing is pulled or
// extracted, without it every layer is.
func TestBuildLazyCacheFrom(t *testing.T) {
	tl := requireTools(t)
	work := t.TempDir()
	writeFiles(t, work, map[string]string{"ctx/Dockerfile": cachedDockerfile}, "ctx")
	ctxDir := filepath.Join(work, "ctx")
	cacheDir := filepath.Join(work, "cache")

	seed := startDaemon(t, tl)
	res := newBuilder(t, tl, seed).run(t, work, "build", "--progress=plain", "--output", "type=cacheonly",
		"--cache-to", "type=local,dest="+cacheDir+",mode=max", ctxDir)
	require.NoError(t, res.err, "seed build:\n%s", res.stderr)
	seed.stop(t)
	layers := cacheLayers(t, cacheDir)
	require.Len(t, layers, 3, "layers of the seeded cache")

	build := func(t *testing.T, cacheArgs ...string) (*daemon, result) {
		d := startDaemon(t, tl)
		args := append([]string{"build", "--progress=plain", "--output", "type=cacheonly"}, cacheArgs...)
		res := newBuilder(t, tl, d).run(t, work, append(args, ctxDir)...)
		require.NoError(t, res.err, "build:\n%s", res.stderr)
		// Without this the test would pass for a cache that was never
		// imported: steps that run extract nothing either.
		require.Equal(t, 3, cachedSteps(res.stderr), "steps reported CACHED:\n%s", res.stderr)
		return d, res
	}

	// As users run it: import lazily from the directory and export back to
	// it. Exporting blob-only layers copies their blobs; it extracts nothing.
	t.Run("lazy", func(t *testing.T) {
		d, res := build(t, "--cache-from", "type=local,src="+cacheDir+",lazy=true",
			"--cache-to", "type=local,dest="+cacheDir+",mode=max")
		require.Empty(t, extracted(res.stderr), "lazy import extracted layers:\n%s", res.stderr)
		imported := d.importedLayers(t)
		for _, l := range layers {
			size, ok := imported[l]
			require.True(t, ok, "the daemon holds no record imported from layer %s: %v", l, imported)
			require.Zero(t, size, "layer %s was pulled or extracted", l)
		}
		require.ElementsMatch(t, layers, exported(res.stderr), "layers exported again:\n%s", res.stderr)
		require.ElementsMatch(t, layers, cacheLayers(t, cacheDir), "layers of the cache exported again")
	})

	t.Run("eager", func(t *testing.T) {
		d, res := build(t, "--cache-from", "type=local,src="+cacheDir)
		require.ElementsMatch(t, layers, extracted(res.stderr), "extracted layers:\n%s", res.stderr)
		imported := d.importedLayers(t)
		for _, l := range layers {
			require.Positive(t, imported[l], "layer %s was not pulled and extracted: %v", l, imported)
		}
	})
}

// TestBuildInvalidLazy shows the buildx user the daemon's error for a lazy
// value that is not a boolean.
func TestBuildInvalidLazy(t *testing.T) {
	tl := requireTools(t)
	work := t.TempDir()
	writeFiles(t, work, map[string]string{"ctx/Dockerfile": cachedDockerfile}, "ctx")
	ctxDir := filepath.Join(work, "ctx")
	cacheDir := filepath.Join(work, "cache")

	d := startDaemon(t, tl)
	b := newBuilder(t, tl, d)
	// The client sends a local cache import only for a directory that holds
	// a cache: without one the daemon would never see the attribute.
	res := b.run(t, work, "build", "--progress=plain", "--output", "type=cacheonly",
		"--cache-to", "type=local,dest="+cacheDir+",mode=max", ctxDir)
	require.NoError(t, res.err, "seed build:\n%s", res.stderr)

	res = b.run(t, work, "build", "--progress=plain", "--output", "type=cacheonly",
		"--cache-from", "type=local,src="+cacheDir+",lazy=maybe", ctxDir)
	require.Regexp(t, regexp.MustCompile(`(?m)^#\d+ ERROR: failed to configure local cache importer: failed to parse lazy: strconv\.ParseBool: parsing "maybe": invalid syntax$`),
		res.stderr, "buildx output")
	// Cache import is best effort in BuildKit: the solver logs an importer
	// that fails to resolve and builds without it (solver/llbsolver/bridge.go,
	// lazyCacheManager), so the build succeeds, as it does with buildctl.
	require.NoError(t, res.err, "build:\n%s", res.stderr)
}
