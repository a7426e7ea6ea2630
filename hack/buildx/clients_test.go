package buildx

import (
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// client is one buildx binary, as a user installs it.
type client struct {
	name, path string
	ours       bool
}

func clients(tl tools) []client {
	return []client{
		{name: "stock buildx", path: tl.stockBuildx},
		{name: "our buildx", path: tl.oursBuildx, ours: true},
	}
}

// with returns tl with c as the buildx the builders run.
func (c client) with(tl tools) tools {
	tl.buildx = c.path
	return tl
}

// TestClientsDiffer runs the two cases in which our client library changes
// what a buildx user gets, with stock buildx (upstream's client library)
// and ours (build/buildkit's), on the same daemon build, asserts each
// client's behaviour, and logs a table of what differs:
//
//   - rotate: the GitHub Actions guide's export to a new directory after a
//     lazy import, on a remote builder behind a proxy that counts the
//     link's bytes. Ours places every layer in DIR-new itself, as hard links
//     of DIR's, and no layer crosses the link; stock buildx has the daemon
//     read each layer from DIR and write it back (series 06).
//   - pinned: a lazy build during which another job deletes the layer blobs
//     of DIR. Ours reads them from the files it opened when the build
//     started and reuses the cached step; with stock buildx the step runs
//     again (series 04).
func TestClientsDiffer(t *testing.T) {
	tl := requireTools(t)
	rows := [][]string{{"case", "stock buildx " + buildxVersion(t, tl.stockBuildx), "our buildx " + buildxVersion(t, tl.oursBuildx)}}
	rotate := []string{"lazy import, export to a new directory: layers in DIR-new that are hard links of DIR's; bytes on the link client→daemon, daemon→client"}
	pinned := []string{"lazy build while another job deletes DIR's layer blobs: the cached step"}
	for _, c := range clients(tl) {
		t.Run(strings.ReplaceAll(c.name, " ", "-"), func(t *testing.T) {
			rotate = append(rotate, clientRotates(t, c.with(tl), c.ours))
			pinned = append(pinned, clientPins(t, c.with(tl), c.ours))
		})
	}
	rows = append(rows, rotate, pinned)
	var b strings.Builder
	for i, r := range rows {
		fmt.Fprintf(&b, "| %s |\n", strings.Join(r, " | "))
		if i == 0 {
			b.WriteString("| --- | --- | --- |\n")
		}
	}
	t.Logf("what differs between the clients (same buildkitd):\n%s", b.String())
}

// clientRotates runs the guide's export to DIR-new with the builder's
// buildx, asserts what it moved and returns a table cell.
func clientRotates(t *testing.T, tl tools, ours bool) string {
	certs := newTLSFiles(t)
	work := t.TempDir()
	ctxDir := filepath.Join(work, "ctx")
	cacheDir := filepath.Join(work, "cache")
	ctxBytes := remoteProject(t, ctxDir, "revision 0\n")
	seed := startTCPDaemon(t, tl, certs)
	res := newRemoteBuilder(t, tl, remoteNode{endpoint: seed.addr, tls: certs}).run(t, work, "build", "--progress=plain",
		"--output", "type=cacheonly", "--cache-to", "type=local,dest="+cacheDir+",mode=max", ctxDir)
	require.NoError(t, res.err, "seed build:\n%s", res.stderr)
	seed.stop(t)
	layers := cacheLayers(t, cacheDir)
	layerBytes := blobsSize(t, cacheDir, layers)

	d := startTCPDaemon(t, tl, certs)
	p := startProxy(t, d.hostPort())
	b := newRemoteBuilder(t, tl, remoteNode{endpoint: "tcp://" + p.Addr(), tls: certs})
	upBefore, downBefore := p.Bytes()
	res = b.run(t, work, "build", "--progress=plain", "--output", "type=cacheonly",
		"--cache-from", "type=local,src="+cacheDir+",lazy=true", "--cache-to", "type=local,dest="+cacheDir+"-new,mode=max", ctxDir)
	require.NoError(t, res.err, "build:\n%s", res.stderr)
	up, down := p.Bytes()
	up, down = up-upBefore, down-downBefore
	require.Equal(t, remoteSteps, cachedSteps(res.stderr), "steps reported CACHED:\n%s", res.stderr)
	require.ElementsMatch(t, layers, requireCompleteCache(t, cacheDir+"-new"), "layers of DIR-new")
	linked := 0
	for _, l := range layers {
		if sameFile(t, blobPath(cacheDir, l), blobPath(cacheDir+"-new", l)) {
			linked++
		}
	}
	t.Logf("link: %d bytes client to daemon, %d bytes daemon to client; layers %d bytes, context %d bytes; %d of %d layers linked",
		up, down, layerBytes, ctxBytes, linked, len(layers))
	if ours {
		require.Equal(t, len(layers), linked, "layers of DIR-new that are hard links of DIR's")
		require.Less(t, up, ctxBytes+sessionSlack, "client to daemon: a layer blob crossed the link")
		require.Less(t, down, int64(sessionSlack), "daemon to client: a layer blob crossed the link")
	} else {
		require.Zero(t, linked, "layers of DIR-new that are hard links of DIR's")
		require.GreaterOrEqual(t, up, layerBytes, "client to daemon: the daemon reads every layer from DIR")
		require.GreaterOrEqual(t, down, layerBytes, "daemon to client: the daemon writes every layer to DIR-new")
	}
	return fmt.Sprintf("%d of %d; %s, %s", linked, len(layers), humanBytes(up), humanBytes(down))
}

// pinnedDockerfile reuses a step that writes random bytes, then waits for
// a URL (the gate) before its next step mounts it.
const pinnedDockerfile = `FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "sh", "-c", "/bin/busybox head -c 16 /dev/urandom | /bin/busybox od -x > /stamp"]
ADD %s /gate
RUN ["/bin/busybox", "sh", "-c", "/bin/busybox cat /stamp /gate > /out"]
`

// clientPins runs a lazy build whose directory loses its layer blobs
// while the build waits at the gate, asserts which stamp the build sees
// and returns a table cell.
func clientPins(t *testing.T, tl tools, ours bool) string {
	work := t.TempDir()
	g := startGate(t)
	writeFiles(t, work, map[string]string{"ctx/Dockerfile": fmt.Sprintf(pinnedDockerfile, g.url)}, "ctx")
	ctxDir := filepath.Join(work, "ctx")
	cacheDir := filepath.Join(work, "cache")
	seedOut := filepath.Join(work, "seed")
	seed := startDaemon(t, tl)
	res := newBuilder(t, tl, seed).run(t, work, "build", "--progress=plain", "--output", "type=local,dest="+seedOut,
		"--cache-to", "type=local,dest="+cacheDir+",mode=max", ctxDir)
	require.NoError(t, res.err, "seed build:\n%s", res.stderr)
	seed.stop(t)
	layers := cacheLayers(t, cacheDir)

	// The gate serves other bytes now: the step after it runs, mounting
	// the reused step's layer, once the layers are gone.
	g.hold("build 2\n")
	out := filepath.Join(work, "out")
	d := startDaemon(t, tl)
	b := newBuilder(t, tl, d)
	done := make(chan result, 1)
	go func() {
		done <- b.run(t, work, "build", "--progress=plain", "--output", "type=local,dest="+out,
			"--cache-from", "type=local,src="+cacheDir+",lazy=true", ctxDir)
	}()
	select {
	case <-g.requested:
	case res := <-done:
		t.Fatalf("the build ended before it reached the gate:\n%s", res.stderr)
	case <-time.After(commandTimeout):
		t.Fatal("the build did not reach the gate")
	}
	for _, l := range layers {
		require.NoError(t, os.Remove(blobPath(cacheDir, l)))
	}
	g.release()
	res = <-done
	require.NoError(t, res.err, "build:\n%s", res.stderr)
	want := readFile(t, filepath.Join(seedOut, "stamp"))
	got := readFile(t, filepath.Join(out, "stamp"))
	require.Equal(t, got+"build 2\n", readFile(t, filepath.Join(out, "out")), "what the last step read")
	if ours {
		require.Equal(t, want, got, "the reused step's bytes: the step ran again")
		return "reused (the blobs were read from the files opened at the start)"
	}
	require.NotEqual(t, want, got, "stock buildx reused the step: the blobs were read from somewhere")
	return "ran again (its record was dropped: blobs missing)"
}

// gate is an HTTP server whose one file a build fetches; hold makes its
// next request wait for release, then serve other bytes.
type gate struct {
	url       string
	requested chan struct{}
	mu        sync.Mutex
	body      string
	wait      chan struct{}
	once      sync.Once
}

func startGate(t *testing.T) *gate {
	t.Helper()
	g := &gate{body: "seed\n", requested: make(chan struct{})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		g.mu.Lock()
		body, wait := g.body, g.wait
		g.mu.Unlock()
		if wait != nil {
			g.once.Do(func() { close(g.requested) })
			select {
			case <-wait:
			case <-r.Context().Done():
				return
			}
		}
		_, _ = io.WriteString(w, body)
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { g.release(); _ = srv.Close() })
	g.url = "http://" + ln.Addr().String() + "/gate"
	return g
}

func (g *gate) hold(body string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.body, g.wait = body, make(chan struct{})
}

func (g *gate) release() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.wait != nil {
		select {
		case <-g.wait:
		default:
			close(g.wait)
		}
	}
}

// requireCompleteCache checks that the blobs the index of the cache
// directory dir references are there and hash to their digests, and
// returns its layers.
func requireCompleteCache(t *testing.T, dir string) []string {
	t.Helper()
	var index struct {
		Manifests []struct {
			Digest string `json:"digest"`
		} `json:"manifests"`
	}
	readJSON(t, filepath.Join(dir, "index.json"), &index)
	require.Len(t, index.Manifests, 1)
	var manifest struct {
		Config struct {
			Digest string `json:"digest"`
		} `json:"config"`
	}
	readJSON(t, blobPath(dir, index.Manifests[0].Digest), &manifest)
	layers := cacheLayers(t, dir)
	for _, dgst := range append([]string{index.Manifests[0].Digest, manifest.Config.Digest}, layers...) {
		f, err := os.Open(blobPath(dir, dgst))
		require.NoError(t, err, "blob %s of %s", dgst, dir)
		h := sha256.New()
		_, err = io.Copy(h, f)
		f.Close()
		require.NoError(t, err)
		require.Equal(t, dgst, fmt.Sprintf("sha256:%x", h.Sum(nil)), "blob of %s", dir)
	}
	return layers
}

func sameFile(t *testing.T, a, b string) bool {
	t.Helper()
	fa, err := os.Stat(a)
	require.NoError(t, err)
	fb, err := os.Stat(b)
	require.NoError(t, err)
	return os.SameFile(fa, fb)
}

func humanBytes(n int64) string {
	if n >= 1<<20 {
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	}
	return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
}

// buildxVersion is what `buildx version` prints, less the package name.
func buildxVersion(t *testing.T, path string) string {
	t.Helper()
	out := (&builder{tl: tools{buildx: path}, dockerConfig: t.TempDir()}).run(t, "", "version")
	require.NoError(t, out.err, "buildx version")
	f := strings.Fields(out.stdout)
	require.GreaterOrEqual(t, len(f), 2, "buildx version: %q", out.stdout)
	return strings.Join(f[1:], " ")
}
