package buildx

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/lazylocal/buildkit/hack/remotetest/tlsfiles"
	"github.com/stretchr/testify/require"
)

const (
	builderName    = "lazylocal"
	commandTimeout = 3 * time.Minute
)

// builder runs the buildx CLI as a user would, with a Docker config
// directory of its own that holds one remote-driver builder for d.
type builder struct {
	tl           tools
	dockerConfig string
	env          []string // more environment, such as DOCKER_HOST
}

// newBuilder creates a buildx builder for d and makes it the current one.
func newBuilder(t *testing.T, tl tools, d *daemon) *builder {
	t.Helper()
	b := &builder{tl: tl, dockerConfig: t.TempDir()}
	res := b.run(t, "", "create", "--driver", "remote", "--name", builderName, "--use", "unix://"+d.sock)
	require.NoError(t, res.err, "buildx create:\n%s", res.stderr)
	res = b.run(t, "", "inspect", "--bootstrap")
	require.NoError(t, res.err, "buildx inspect --bootstrap:\n%s", res.stderr)
	require.Regexp(t, `(?m)^Status:\s+running$`, res.stdout, "buildx inspect --bootstrap")
	return b
}

// remoteNode is one node of a remote-driver builder: a TLS daemon reached
// at endpoint (tcp://host:port, the daemon's own or a proxy's), pinned to
// platform when that is set.
type remoteNode struct {
	endpoint string
	tls      tlsfiles.Files
	platform string
}

// newRemoteBuilder creates a remote-driver builder of nodes, one
// buildx create (the first) or create --append (the others) each, with the
// TLS driver options a remote builder needs, and makes it the current one.
func newRemoteBuilder(t *testing.T, tl tools, nodes ...remoteNode) *builder {
	t.Helper()
	b := &builder{tl: tl, dockerConfig: t.TempDir()}
	for i, n := range nodes {
		args := []string{"create", "--driver", "remote", "--name", builderName, "--node", fmt.Sprintf("node%d", i),
			"--driver-opt", fmt.Sprintf("cacert=%s,cert=%s,key=%s,servername=%s", n.tls.CA, n.tls.ClientCert, n.tls.ClientKey, tlsfiles.ServerName)}
		if i == 0 {
			args = append(args, "--use")
		} else {
			args = append(args, "--append")
		}
		if n.platform != "" {
			args = append(args, "--platform", n.platform)
		}
		res := b.run(t, "", append(args, n.endpoint)...)
		require.NoError(t, res.err, "buildx create:\n%s", res.stderr)
	}
	res := b.run(t, "", "inspect", "--bootstrap")
	require.NoError(t, res.err, "buildx inspect --bootstrap:\n%s", res.stderr)
	require.Len(t, regexp.MustCompile(`(?m)^Status:\s+running$`).FindAllString(res.stdout, -1), len(nodes), "nodes running in buildx inspect --bootstrap:\n%s", res.stdout)
	return b
}

type result struct {
	stdout, stderr string
	err            error
}

// run runs buildx args in dir, in a copy of the environment from which every
// Docker, buildx and BuildKit setting was removed.
func (b *builder) run(t *testing.T, dir string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, b.tl.buildx, args...)
	cmd.Dir = dir
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); strings.HasPrefix(k, "DOCKER_") || strings.HasPrefix(k, "BUILDX_") || strings.HasPrefix(k, "BUILDKIT_") {
			continue
		}
		cmd.Env = append(cmd.Env, kv)
	}
	cmd.Env = append(cmd.Env, "DOCKER_CONFIG="+b.dockerConfig, "BUILDX_BUILDER="+builderName, "NO_COLOR=1")
	cmd.Env = append(cmd.Env, b.env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	t.Logf("buildx %s (%.1fs, %v)", strings.Join(args, " "), time.Since(start).Seconds(), exitStatus(err))
	return result{stdout: stdout.String(), stderr: stderr.String(), err: err}
}

func exitStatus(err error) string {
	if err == nil {
		return "exit 0"
	}
	return err.Error()
}

var (
	extractingRe = regexp.MustCompile(`(?m)^#\d+ extracting (sha256:[0-9a-f]{64})`)
	cachedRe     = regexp.MustCompile(`(?m)^#\d+ CACHED$`)
	writtenRe    = regexp.MustCompile(`(?m)^#\d+ writing layer (sha256:[0-9a-f]{64})`)
)

// extracted lists, once each, the layers that --progress=plain output says
// the daemon extracted.
func extracted(progress string) []string {
	return progressLayers(extractingRe, progress)
}

// exported lists, once each, the layers that --progress=plain output says a
// cache export wrote.
func exported(progress string) []string {
	return progressLayers(writtenRe, progress)
}

func progressLayers(re *regexp.Regexp, progress string) []string {
	seen := map[string]struct{}{}
	var layers []string
	for _, m := range re.FindAllStringSubmatch(progress, -1) {
		if _, ok := seen[m[1]]; !ok {
			seen[m[1]] = struct{}{}
			layers = append(layers, m[1])
		}
	}
	return layers
}

// cachedSteps counts the steps that --progress=plain output reports CACHED.
func cachedSteps(progress string) int {
	return len(cachedRe.FindAllString(progress, -1))
}

// cacheLayers lists the layer blobs of the cache that a local cache export
// wrote to dir, as its index.json and cache manifest name them.
func cacheLayers(t *testing.T, dir string) []string {
	t.Helper()
	type descriptor struct {
		MediaType string `json:"mediaType"`
		Digest    string `json:"digest"`
	}
	var index struct {
		Manifests []descriptor `json:"manifests"`
	}
	readJSON(t, filepath.Join(dir, "index.json"), &index)
	require.Len(t, index.Manifests, 1, "cache index of %s", dir)
	var manifest struct {
		MediaType string       `json:"mediaType"`
		Manifests []descriptor `json:"manifests"`
		Layers    []descriptor `json:"layers"`
	}
	readJSON(t, blobPath(dir, index.Manifests[0].Digest), &manifest)
	var layers []string
	// An image manifest lists the layers; a manifest list (image-manifest=
	// false) lists them beside the cache config.
	for _, l := range append(manifest.Layers, manifest.Manifests...) {
		if l.MediaType != "application/vnd.buildkit.cacheconfig.v0" {
			layers = append(layers, l.Digest)
		}
	}
	return layers
}

func blobPath(dir, dgst string) string {
	algo, hex, _ := strings.Cut(dgst, ":")
	return filepath.Join(dir, "blobs", algo, hex)
}

func readJSON(t *testing.T, p string, v any) {
	t.Helper()
	dt, err := os.ReadFile(p)
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(dt, v), "parse %s", p)
}

// writeFiles writes files (path: content) under dir, and the static busybox
// as busybox in each directory named in busyboxIn.
func writeFiles(t *testing.T, dir string, files map[string]string, busyboxIn ...string) {
	t.Helper()
	for p, content := range files {
		p = filepath.Join(dir, p)
		require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o755))
		require.NoError(t, os.WriteFile(p, []byte(content), 0o644))
	}
	bb, err := os.ReadFile(busyboxPath)
	require.NoError(t, err)
	for _, d := range busyboxIn {
		require.NoError(t, os.MkdirAll(filepath.Join(dir, d), 0o755))
		require.NoError(t, os.WriteFile(filepath.Join(dir, d, "busybox"), bb, 0o755))
	}
}
