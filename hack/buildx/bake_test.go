package buildx

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// The base writes a value no rerun reproduces, so its output tells whether
// it came from the cache; app runs a step on top of it that is never in the
// cache.
const (
	baseDockerfile = `FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "sh", "-c", "/bin/busybox cat /proc/sys/kernel/random/uuid > /base.txt"]
`
	appDockerfile = `FROM base
RUN ["/bin/busybox", "sh", "-c", "/bin/busybox cat /base.txt > /app.txt && echo app >> /app.txt"]
`
	// bakeFile links app to base as in docker/buildx#1325, both importing
	// the cache directory lazily.
	bakeFile = `target "base" {
  context    = "base"
  cache-from = ["type=local,src=%[1]s,lazy=true"]
}

target "app" {
  context    = "app"
  contexts   = { base = "target:base" }
  cache-from = ["type=local,src=%[1]s,lazy=true"]
}
`
)

// TestBakeLinkedTargetsLazyCacheFrom bakes app on top of a lazily imported
// base, on fresh daemons with a cache of base seeded once. app's RUN mounts
// the base layers that were imported blob-only, so they are read from the
// cache directory through a client session while the build runs.
func TestBakeLinkedTargetsLazyCacheFrom(t *testing.T) {
	tl := requireTools(t)
	// bake lets builds read and write only below its working directory
	// unless granted more (--allow=fs=...), so everything lives in work.
	work := t.TempDir()
	cacheDir := filepath.Join(work, "cache")
	writeFiles(t, work, map[string]string{
		"base/Dockerfile": baseDockerfile,
		"app/Dockerfile":  appDockerfile,
		"docker-bake.hcl": fmt.Sprintf(bakeFile, cacheDir),
	}, "base")

	seed := startDaemon(t, tl)
	seedOut := filepath.Join(work, "seed")
	res := newBuilder(t, tl, seed).run(t, work, "bake", "--progress=plain",
		"--set", "base.cache-to=type=local,dest="+cacheDir+",mode=max",
		"--set", "base.output=type=local,dest="+seedOut, "base")
	require.NoError(t, res.err, "seed bake:\n%s", res.stderr)
	seed.stop(t)
	baseTxt := readFile(t, filepath.Join(seedOut, "base.txt"))
	require.Len(t, baseTxt, len("00000000-0000-0000-0000-000000000000\n"), "base.txt of the seed")

	checkApp := func(t *testing.T, out string) {
		t.Helper()
		require.Equal(t, baseTxt, readFile(t, filepath.Join(out, "base.txt")), "base.txt: base did not come from the cache")
		require.Equal(t, baseTxt+"app\n", readFile(t, filepath.Join(out, "app.txt")), "app.txt")
	}

	for i := 1; i <= 3; i++ {
		t.Run(fmt.Sprintf("bake-%d", i), func(t *testing.T) {
			d := startDaemon(t, tl)
			out := filepath.Join(work, fmt.Sprintf("out-%d", i))
			res := newBuilder(t, tl, d).run(t, work, "bake", "--progress=plain",
				"--set", "app.output=type=local,dest="+out, "base", "app")
			require.NoError(t, res.err, "bake:\n%s", res.stderr)
			checkApp(t, out)
		})
	}

	// base alone imports the cache and leaves its layers blob-only; its
	// session ends with that bake. The next bake finds base in the daemon's
	// own cache, and app's RUN can read those layers only through a session
	// of the new bake.
	t.Run("base-then-app", func(t *testing.T) {
		d := startDaemon(t, tl)
		b := newBuilder(t, tl, d)
		res := b.run(t, work, "bake", "--progress=plain", "--set", "base.output=type=cacheonly", "base")
		require.NoError(t, res.err, "bake base:\n%s", res.stderr)
		require.Equal(t, 2, cachedSteps(res.stderr), "steps of base reported CACHED:\n%s", res.stderr)
		require.Empty(t, extracted(res.stderr), "bake base extracted layers:\n%s", res.stderr)

		out := filepath.Join(work, "out-base-then-app")
		res = b.run(t, work, "bake", "--progress=plain", "--set", "app.output=type=local,dest="+out, "app")
		require.NoError(t, res.err, "bake app:\n%s", res.stderr)
		checkApp(t, out)
	})
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	dt, err := os.ReadFile(p)
	require.NoError(t, err)
	return string(dt)
}
