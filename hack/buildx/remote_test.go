package buildx

import (
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lazylocal/buildkit/hack/remotetest/linkproxy"
	"github.com/lazylocal/buildkit/hack/remotetest/tlsfiles"
	"github.com/stretchr/testify/require"
)

// remoteDockerfile is the report's shape on a small scale: a base whose two
// dependency layers are 4 MiB of random bytes each (no compression makes
// them smaller on the link), then the sources copied in with a plain
// COPY, which mounts the whole chain below it.
const remoteDockerfile = `FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "sh", "-c", "/bin/busybox head -c 4194304 /dev/urandom > /dep1"]
RUN ["/bin/busybox", "sh", "-c", "/bin/busybox head -c 4194304 /dev/urandom > /dep2"]
WORKDIR /app
COPY . ./
`

const (
	// remoteSteps are the steps of remoteDockerfile that a rebuild with
	// its cache and unchanged sources reports CACHED.
	remoteSteps = 5
	// depBytes is what the two random layers hold: a build that mounts the
	// base moves at least this much from the client to the daemon.
	depBytes = 2 * 4 << 20
	// sessionSlack bounds what a build sends to the daemon besides its
	// build context when it reads no layer: gRPC and TLS framing, the
	// cache manifest and config, the Dockerfile. It is well below the
	// smallest layer of remoteDockerfile (busybox, ~1 MB compressed).
	sessionSlack = 512 << 10
)

// remoteProject writes remoteDockerfile's context to dir and returns the
// size of its files: the build context crosses the link on every build.
func remoteProject(t *testing.T, dir, source string) int64 {
	t.Helper()
	writeFiles(t, dir, map[string]string{"Dockerfile": remoteDockerfile, "src.txt": source}, ".")
	var size int64
	require.NoError(t, filepath.WalkDir(dir, func(_ string, e fs.DirEntry, err error) error {
		if err != nil || e.IsDir() {
			return err
		}
		fi, err := e.Info()
		if err == nil {
			size += fi.Size()
		}
		return err
	}))
	return size
}

// buildctl runs buildctl against d through addr (d's own address or a
// proxy's) and returns its output.
func buildctl(t *testing.T, d *daemon, addr string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, d.tl.buildctl, append(d.clientArgs(addr), args...)...)
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	err := cmd.Run()
	t.Logf("buildctl %s (%.1fs, %v)", strings.Join(args, " "), time.Since(start).Seconds(), exitStatus(err))
	return out.String(), err
}

func dockerfileArgs(ctxDir string, extra ...string) []string {
	return append([]string{"build", "--progress=plain", "--frontend", "dockerfile.v0",
		"--local", "context=" + ctxDir, "--local", "dockerfile=" + ctxDir}, extra...)
}

// blobsSize is the size of the layer blobs layers in the cache directory.
func blobsSize(t *testing.T, dir string, layers []string) int64 {
	t.Helper()
	var n int64
	for _, l := range layers {
		fi, err := os.Stat(blobPath(dir, l))
		require.NoError(t, err)
		n += fi.Size()
	}
	return n
}

// TestRemoteBuildctlLazy runs build 2 as a CI job with a remote builder
// does: buildctl on the client's side, with the cache directory, talks over
// TCP and TLS to a fresh buildkitd, through a proxy that counts what
// crosses the link. All cached and lazy, no layer blob crosses; eager, all
// of them do; the report's Dockerfile (its COPY . ./ changed) moves the
// chain it mounts and builds the right files.
func TestRemoteBuildctlLazy(t *testing.T) {
	tl := requireTools(t)
	certs := newTLSFiles(t)
	work := t.TempDir()
	ctxDir := filepath.Join(work, "ctx")
	cacheDir := filepath.Join(work, "cache")
	ctxBytes := remoteProject(t, ctxDir, "revision 0\n")

	seed := startTCPDaemon(t, tl, certs)
	seedOut := filepath.Join(work, "seed")
	out, err := buildctl(t, seed, seed.addr, dockerfileArgs(ctxDir,
		"--export-cache", "type=local,dest="+cacheDir+",mode=max",
		"--output", "type=local,dest="+seedOut)...)
	require.NoError(t, err, "seed build:\n%s", out)
	seed.stop(t)
	layers := cacheLayers(t, cacheDir)
	layerBytes := blobsSize(t, cacheDir, layers)
	t.Logf("context %d bytes; cache: %d layers, %d bytes", ctxBytes, len(layers), layerBytes)

	// build runs build 2 on a fresh daemon through a new proxy and returns
	// the daemon, buildctl's output and the bytes sent to the daemon.
	build := func(t *testing.T, extra ...string) (*daemon, string, int64) {
		d := startTCPDaemon(t, tl, certs)
		p := startProxy(t, d.hostPort())
		out, err := buildctl(t, d, "tcp://"+p.Addr(), dockerfileArgs(ctxDir, extra...)...)
		require.NoError(t, err, "build:\n%s", out)
		up, down := p.Bytes()
		t.Logf("link: %d bytes client to daemon, %d bytes daemon to client", up, down)
		return d, out, up
	}

	t.Run("cached-lazy", func(t *testing.T) {
		d, out, up := build(t, "--import-cache", "type=local,src="+cacheDir+",lazy=true")
		require.Equal(t, remoteSteps, cachedSteps(out), "steps reported CACHED:\n%s", out)
		require.Less(t, up, ctxBytes+sessionSlack,
			"client to daemon: more than the build context (%d bytes) and %d bytes of session: a layer blob (the cache's: %d bytes) crossed the link", ctxBytes, sessionSlack, layerBytes)
		for l, size := range d.importedLayers(t) {
			require.Zero(t, size, "layer %s was pulled or extracted", l)
		}
	})

	t.Run("cached-eager", func(t *testing.T) {
		_, out, up := build(t, "--import-cache", "type=local,src="+cacheDir)
		require.Equal(t, remoteSteps, cachedSteps(out), "steps reported CACHED:\n%s", out)
		require.GreaterOrEqual(t, up, ctxBytes+layerBytes, "client to daemon: eager import reads every layer blob of the cache")
	})

	// The report's Dockerfile: its changed COPY . ./ mounts the base, so
	// the base's layers cross the link, lazily imported or not, and the
	// build still makes the right files from the cached base. Its random
	// files tell the cached base from one built again; the number of
	// CACHED lines does not (the solver may or may not report a step
	// below an uncached one).
	t.Run("report-lazy", func(t *testing.T) {
		remoteProject(t, ctxDir, "revision 1\n")
		t.Cleanup(func() { remoteProject(t, ctxDir, "revision 0\n") })
		buildOut := filepath.Join(work, "report-out")
		_, _, up := build(t, "--output", "type=local,dest="+buildOut,
			"--import-cache", "type=local,src="+cacheDir+",lazy=true")
		require.GreaterOrEqual(t, up, ctxBytes+depBytes, "client to daemon: the chain COPY . ./ mounts")
		require.Equal(t, "revision 1\n", readFile(t, filepath.Join(buildOut, "app", "src.txt")), "the changed source")
		for _, f := range []string{"dep1", "dep2"} {
			require.Equal(t, readFile(t, filepath.Join(seedOut, f)), readFile(t, filepath.Join(buildOut, f)), "%s: the base did not come from the cache", f)
		}
	})
}

// TestRemoteBuildxLazy is TestRemoteBuildctlLazy's lazy half as buildx
// users run it: a builder of buildx's remote driver with its TLS driver
// options, on a fresh TCP daemon, through the counting proxy, importing
// with --cache-from type=local,...,lazy=true.
func TestRemoteBuildxLazy(t *testing.T) {
	tl := requireTools(t)
	certs := newTLSFiles(t)
	work := t.TempDir()
	ctxDir := filepath.Join(work, "ctx")
	cacheDir := filepath.Join(work, "cache")
	ctxBytes := remoteProject(t, ctxDir, "revision 0\n")

	seed := startTCPDaemon(t, tl, certs)
	seedOut := filepath.Join(work, "seed")
	res := newRemoteBuilder(t, tl, remoteNode{endpoint: seed.addr, tls: certs}).run(t, work, "build", "--progress=plain",
		"--cache-to", "type=local,dest="+cacheDir+",mode=max", "--output", "type=local,dest="+seedOut, ctxDir)
	require.NoError(t, res.err, "seed build:\n%s", res.stderr)
	seed.stop(t)
	layers := cacheLayers(t, cacheDir)

	build := func(t *testing.T, args ...string) (result, int64) {
		d := startTCPDaemon(t, tl, certs)
		p := startProxy(t, d.hostPort())
		b := newRemoteBuilder(t, tl, remoteNode{endpoint: "tcp://" + p.Addr(), tls: certs})
		before, _ := p.Bytes()
		res := b.run(t, work, append(append([]string{"build", "--progress=plain",
			"--cache-from", "type=local,src=" + cacheDir + ",lazy=true"}, args...), ctxDir)...)
		require.NoError(t, res.err, "build:\n%s", res.stderr)
		up, down := p.Bytes()
		t.Logf("link during the build: %d bytes client to daemon, %d bytes daemon to client", up-before, down)
		return res, up - before
	}

	// As users run it: the cache exported back to the directory. The
	// daemon copies the blob-only layers it exports from the client's
	// directory into the same directory: the client already has them.
	t.Run("cached", func(t *testing.T) {
		res, up := build(t, "--output", "type=cacheonly", "--cache-to", "type=local,dest="+cacheDir+",mode=max")
		require.Equal(t, remoteSteps, cachedSteps(res.stderr), "steps reported CACHED:\n%s", res.stderr)
		require.Less(t, up, ctxBytes+sessionSlack,
			"client to daemon: more than the build context (%d bytes) and %d bytes of session: a layer blob crossed the link", ctxBytes, sessionSlack)
		require.ElementsMatch(t, layers, cacheLayers(t, cacheDir), "layers of the cache exported again")
	})

	t.Run("report", func(t *testing.T) {
		remoteProject(t, ctxDir, "revision 1\n")
		t.Cleanup(func() { remoteProject(t, ctxDir, "revision 0\n") })
		buildOut := filepath.Join(work, "report-out")
		_, up := build(t, "--output", "type=local,dest="+buildOut)
		require.GreaterOrEqual(t, up, ctxBytes+depBytes, "client to daemon: the chain COPY . ./ mounts")
		require.Equal(t, "revision 1\n", readFile(t, filepath.Join(buildOut, "app", "src.txt")), "the changed source")
		for _, f := range []string{"dep1", "dep2"} {
			require.Equal(t, readFile(t, filepath.Join(seedOut, f)), readFile(t, filepath.Join(buildOut, f)), "%s: the base did not come from the cache", f)
		}
	})
}

// bakeTarget is one target of the two-node bake: remoteDockerfile for one
// platform, with the cache options given (none when empty).
func bakeTarget(name, platform, cacheFrom, cacheTo string) string {
	opt := func(key, v string) string {
		if v == "" {
			return ""
		}
		return fmt.Sprintf("  %s = [%q]\n", key, v)
	}
	return fmt.Sprintf("target %q {\n  context = \"ctx\"\n  platforms = [%q]\n  output = [\"type=cacheonly\"]\n%s%s}\n",
		name, platform, opt("cache-from", cacheFrom), opt("cache-to", cacheTo))
}

// TestRemoteTwoNodesLazy bakes on a builder of two remote nodes (buildx
// create, then create --append), two fresh TCP daemons with TLS, each
// behind its own counting proxy, both importing the client's one cache
// directory lazily. The work runs on both nodes: each node is pinned to a
// platform with --platform (linux/amd64 and linux/386, which both run
// natively on an amd64 host, so no emulator is needed) and each target
// builds one of them; buildx's node resolver matches a target's platform
// to a node's strictly before anything else. (One multi-platform build on
// the two nodes would run there too, but each node exports its records to
// the directory as "latest" and the last export replaces the other's.)
// All cached, no layer crosses to either node, and afterwards the directory
// still holds every record of both platforms.
func TestRemoteTwoNodesLazy(t *testing.T) {
	tl := requireTools(t)
	certs := newTLSFiles(t)
	work := t.TempDir()
	cacheDir := filepath.Join(work, "cache")
	ctxBytes := remoteProject(t, filepath.Join(work, "ctx"), "revision 0\n")
	targets := []struct{ name, platform string }{{"amd64", "linux/amd64"}, {"i386", "linux/386"}}

	// The seed: one node, which runs both platforms, one target after the
	// other, each exporting its records under its own tag.
	var bake string
	for _, tg := range targets {
		bake += bakeTarget(tg.name, tg.platform, "", "type=local,dest="+cacheDir+",tag="+tg.name+",mode=max")
	}
	writeFiles(t, work, map[string]string{"docker-bake.hcl": bake})
	seed := startTCPDaemon(t, tl, certs)
	sb := newRemoteBuilder(t, tl, remoteNode{endpoint: seed.addr, tls: certs})
	seeded := map[string][]string{}
	digests := map[string]string{}
	for _, tg := range targets {
		res := sb.run(t, work, "bake", "--progress=plain", tg.name)
		require.NoError(t, res.err, "seed bake %s:\n%s", tg.name, res.stderr)
		digests[tg.name], seeded[tg.name] = taggedCache(t, cacheDir, tg.name)
	}
	seed.stop(t)

	// Both targets import the directory lazily, each its own records,
	// named by digest: an import by tag reads index.json, and upstream's
	// client takes index.json.lock with a TryLock that fails while another
	// build of the bake writes the index. For the same reason only amd64
	// exports: two exports into one directory at the same moment can fail
	// with "could not lock .../index.json.lock". i386's records stay as
	// the seed wrote them.
	bake = bakeTarget("amd64", "linux/amd64", "type=local,src="+cacheDir+",digest="+digests["amd64"]+",lazy=true",
		"type=local,dest="+cacheDir+",tag=amd64,mode=max") +
		bakeTarget("i386", "linux/386", "type=local,src="+cacheDir+",digest="+digests["i386"]+",lazy=true", "")
	writeFiles(t, work, map[string]string{"docker-bake.hcl": bake})

	var (
		daemons []*daemon
		proxies []*linkproxy.Proxy
		nodes   []remoteNode
	)
	for _, tg := range targets {
		d := startTCPDaemon(t, tl, certs)
		px := startProxy(t, d.hostPort())
		daemons, proxies = append(daemons, d), append(proxies, px)
		nodes = append(nodes, remoteNode{endpoint: "tcp://" + px.Addr(), tls: certs, platform: tg.platform})
	}
	b := newRemoteBuilder(t, tl, nodes...)
	var before []int64
	for _, px := range proxies {
		up, _ := px.Bytes()
		before = append(before, up)
	}
	res := b.run(t, work, "bake", "--progress=plain", "amd64", "i386")
	require.NoError(t, res.err, "bake:\n%s", res.stderr)
	require.Equal(t, 2*remoteSteps, cachedSteps(res.stderr), "steps reported CACHED:\n%s", res.stderr)
	for i, px := range proxies {
		up, down := px.Bytes()
		up -= before[i]
		t.Logf("node%d (%s): %d bytes client to daemon, %d bytes daemon to client", i, nodes[i].platform, up, down)
		// Each node gets the build context of its target, and no layer.
		require.Less(t, up, ctxBytes+sessionSlack,
			"node%d (%s), client to daemon: more than the build context (%d bytes) and %d bytes of session: a layer blob crossed the link", i, nodes[i].platform, ctxBytes, sessionSlack)
		imported := daemons[i].importedLayers(t)
		require.NotEmpty(t, imported, "node%d (%s) imported no layer: no target ran there", i, nodes[i].platform)
		for l, size := range imported {
			require.Zero(t, size, "node%d (%s): layer %s was pulled or extracted", i, nodes[i].platform, l)
		}
	}
	for _, tg := range targets {
		_, layers := taggedCache(t, cacheDir, tg.name)
		require.ElementsMatch(t, seeded[tg.name], layers, "layers of the cache tagged %s after the bake", tg.name)
	}
}

// taggedCache returns the digest of the cache manifest that the index of
// the cache directory dir names tag, and the layer blobs it lists.
func taggedCache(t *testing.T, dir, tag string) (string, []string) {
	t.Helper()
	type descriptor struct {
		MediaType   string            `json:"mediaType"`
		Digest      string            `json:"digest"`
		Annotations map[string]string `json:"annotations"`
	}
	var index struct {
		Manifests []descriptor `json:"manifests"`
	}
	readJSON(t, filepath.Join(dir, "index.json"), &index)
	var found []string
	for _, m := range index.Manifests {
		if m.Annotations["org.opencontainers.image.ref.name"] == tag {
			found = append(found, m.Digest)
		}
	}
	require.Len(t, found, 1, "manifests tagged %s in %s: %+v", tag, dir, index.Manifests)
	var manifest struct {
		Manifests []descriptor `json:"manifests"`
		Layers    []descriptor `json:"layers"`
	}
	readJSON(t, blobPath(dir, found[0]), &manifest)
	var layers []string
	for _, l := range append(manifest.Layers, manifest.Manifests...) {
		if l.MediaType != "application/vnd.buildkit.cacheconfig.v0" {
			layers = append(layers, l.Digest)
		}
	}
	require.NotEmpty(t, layers, "layers of the cache tagged %s", tag)
	return found[0], layers
}

// newTLSFiles makes a CA and certificates for one test, as an operator of a
// remote builder would: the daemon requires a client certificate signed by
// the CA, and clients verify the daemon's.
func newTLSFiles(t *testing.T) tlsfiles.Files {
	t.Helper()
	f, err := tlsfiles.Write(t.TempDir())
	require.NoError(t, err)
	return f
}

// startProxy puts a link that counts what it carries, at no rate limit,
// in front of target until the test ends.
func startProxy(t *testing.T, target string) *linkproxy.Proxy {
	t.Helper()
	p, err := linkproxy.Start(target, 0)
	require.NoError(t, err)
	t.Cleanup(p.Close)
	return p
}
