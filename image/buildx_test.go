package image

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

var cachedRe = regexp.MustCompile(`(?m)^#\d+ CACHED$`)

// buildx runs bin/buildx against our dockerd and returns what it printed.
func (e *env) buildx(t *testing.T, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, e.tl.buildx, args...)
	cmd.Env = e.dockerEnv()
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	err := cmd.Run()
	if ctx.Err() != nil {
		err = fmt.Errorf("buildx did not finish within %s: %w", buildTimeout, err)
	}
	t.Logf("buildx %s: %.2fs, %d extracting lines, %v", strings.Join(args, " "), time.Since(start).Seconds(), len(extractingRe.FindAllString(out.String(), -1)), exitStatus(err))
	return out.String(), err
}

// createBuilder makes a docker-container builder on our root image, whose
// buildkitd starts empty, and removes it, state and all, when the test ends.
func (e *env) createBuilder(t *testing.T, name string) {
	t.Helper()
	out, err := e.buildx(t, "create", "--name", name, "--driver", "docker-container",
		"--driver-opt", "image="+e.rootImage, "--driver-opt", "network=host",
		"--buildkitd-config", e.mirrorConfig, "--bootstrap")
	require.NoError(t, err, "buildx create:\n%s", out)
	t.Cleanup(func() { e.removeBuilder(t, name) })
	out, err = e.buildx(t, "inspect", name)
	require.NoError(t, err, "buildx inspect:\n%s", out)
	require.Regexp(t, `(?m)^BuildKit version:\s+`+regexp.QuoteMeta(e.version)+`$`, out, "the builder does not run our buildkitd")
}

func (e *env) removeBuilder(t *testing.T, name string) {
	t.Helper()
	if out, err := e.buildx(t, "rm", name); err != nil && !strings.Contains(out, "no builder") {
		t.Errorf("buildx rm %s: %v\n%s", name, err, out)
	}
}

// TestBuildxDockerContainer builds with buildx's docker-container driver on
// our root image, as GitHub Actions' setup-buildx-action does, the cache in a
// local directory imported with lazy=true: build 1 seeds it, build 2 on a
// new builder finds every step cached and extracts nothing, build 3 exports
// with reset=true, which deletes the blobs no manifest references.
func TestBuildxDockerContainer(t *testing.T) {
	e := requireEnv(t)
	const name = "lazylocal-image-test"
	ctxDir := t.TempDir()
	writeContext(t, ctxDir, reportDockerfile(""), "console.log(1)\n")
	cache := filepath.Join(t.TempDir(), "cache")
	build := func(cacheTo string) string {
		t.Helper()
		out, err := e.buildx(t, "build", "--builder", name, "--progress=plain",
			"--cache-from", "type=local,src="+cache+",lazy=true",
			"--cache-to", cacheTo,
			ctxDir)
		require.NoError(t, err, "buildx build:\n%s", out)
		return out
	}
	cacheTo := "type=local,dest=" + cache + ",mode=max"

	e.createBuilder(t, name)
	build(cacheTo)
	require.FileExists(t, filepath.Join(cache, "index.json"))

	// A new builder starts with an empty buildkitd: all it has is the
	// cache directory.
	e.removeBuilder(t, name)
	e.createBuilder(t, name)
	out := build(cacheTo)
	require.Zero(t, len(extractingRe.FindAllString(out, -1)), "build 2 extracted imported layers:\n%s", out)
	require.Len(t, cachedRe.FindAllString(out, -1), 4, "build 2: want its 4 steps after FROM cached:\n%s", out)

	stale := []byte("no manifest references this blob\n")
	stalePath := filepath.Join(cache, "blobs", "sha256", fmt.Sprintf("%x", sha256.Sum256(stale)))
	require.NoError(t, os.WriteFile(stalePath, stale, 0o644))
	build(cacheTo + ",reset=true")
	require.NoFileExists(t, stalePath, "reset=true left a blob no manifest references")
	require.FileExists(t, filepath.Join(cache, "index.json"))
}
