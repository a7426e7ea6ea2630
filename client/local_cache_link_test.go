package client

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/moby/buildkit/client/llb"
	"github.com/moby/buildkit/session/grpchijack"
	"github.com/moby/buildkit/util/testutil/integration"
	"github.com/moby/buildkit/util/testutil/workers"
	digest "github.com/opencontainers/go-digest"
	ocispecs "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/stretchr/testify/require"
)

// linkedLayerSize is the size of each layer of a linkedCache: more than
// everything else a build's session carries.
const linkedLayerSize = 1 << 20

// testLocalCacheExportLinksImportedBlobs checks that an export to a new
// directory takes the blobs that a directory the build imports holds from
// there: the export is complete, its layers are hard links of the imported
// ones and no layer is sent by the daemon. The import reads every layer
// when it loads, which shows that the session's bytes are counted.
func testLocalCacheExportLinksImportedBlobs(t *testing.T, sb integration.Sandbox) {
	lc := newLinkedCache(t, sb)
	c, b := newCountingClient(t, sb)
	defer ensurePruneAll(t, c, sb)
	dest := filepath.Join(t.TempDir(), "cache-new")
	_, err := c.Solve(sb.Context(), lc.def, lc.rotate(dest), nil)
	require.NoError(t, err)
	require.Equal(t, lc.layers, requireCompleteCache(t, dest))
	t.Logf("session: %d bytes sent, %d received", b.sent.Load(), b.received.Load())
	require.GreaterOrEqual(t, b.sent.Load(), int64(len(lc.layers)*linkedLayerSize), "the import reads every layer")
	require.Less(t, b.received.Load(), int64(linkedLayerSize), "the daemon sent a layer")
	for _, l := range lc.layers {
		require.True(t, sameBlob(t, lc.dir, dest, l), "layer %s is not a link of the imported one", l)
	}
}

// testLocalCacheExportCorruptImportedBlob checks that a blob whose bytes do
// not match its digest in the imported directory never lands in the new
// one: a stray blob, which no record of the imported cache references,
// under the digest of a layer the build makes. The daemon writes the layer
// it made, and an intact stray blob beside it is linked.
func testLocalCacheExportCorruptImportedBlob(t *testing.T, sb integration.Sandbox) {
	t.Run("stray", func(t *testing.T) {
		lc := newLinkedCache(t, sb)
		other := newLinkedCache(t, sb)
		for _, l := range lc.layers[1:] {
			dt, err := os.ReadFile(filepath.Join(lc.dir, "blobs", l.Algorithm().String(), l.Encoded()))
			require.NoError(t, err)
			require.NoError(t, os.WriteFile(filepath.Join(other.dir, "blobs", l.Algorithm().String(), l.Encoded()), dt, 0o444))
		}
		corruptBlob(t, other.dir, lc.layers[1])
		c, err := New(sb.Context(), sb.Address())
		require.NoError(t, err)
		defer c.Close()
		defer ensurePruneAll(t, c, sb)
		dest := filepath.Join(t.TempDir(), "cache-new")
		_, err = c.Solve(sb.Context(), lc.def, other.rotate(dest), nil)
		require.NoError(t, err)
		require.Equal(t, lc.layers, requireCompleteCache(t, dest))
		require.False(t, sameBlob(t, other.dir, dest, lc.layers[1]), "the corrupt blob was linked")
		require.True(t, sameBlob(t, other.dir, dest, lc.layers[2]), "the intact blob is not a link of the imported one")
	})
}

// corruptBlob flips one byte of the blob dgst in the cache directory dir.
func corruptBlob(t *testing.T, dir string, dgst digest.Digest) {
	p := filepath.Join(dir, "blobs", dgst.Algorithm().String(), dgst.Encoded())
	dt, err := os.ReadFile(p)
	require.NoError(t, err)
	dt[len(dt)/2] ^= 0xff
	require.NoError(t, os.Chmod(p, 0o644))
	require.NoError(t, os.WriteFile(p, dt, 0o644))
}

// linkedCache is a cache directory of three layers of random bytes,
// exported with mode=max, with the daemon pruned afterwards. The layers'
// bytes come in the definition, not through the session, so that a later
// build's session carries the cache and little else.
type linkedCache struct {
	dir    string
	def    *llb.Definition
	layers []digest.Digest
}

func newLinkedCache(t *testing.T, sb integration.Sandbox) *linkedCache {
	integration.SkipOnPlatform(t, "windows")
	workers.CheckFeatureCompat(t, sb, workers.FeatureCacheExport, workers.FeatureCacheImport, workers.FeatureCacheBackendLocal)
	c, err := New(sb.Context(), sb.Address())
	require.NoError(t, err)
	defer c.Close()

	st := llb.Scratch()
	for i := range 3 {
		dt := make([]byte, linkedLayerSize)
		_, err := rand.Read(dt)
		require.NoError(t, err)
		// A fixed time: a step that runs again makes the same layer.
		st = st.File(llb.Mkfile(fmt.Sprintf("/layer%d", i), 0o644, dt, llb.WithCreatedTime(time.Unix(0, 0))))
	}
	lc := &linkedCache{dir: filepath.Join(t.TempDir(), "cache")}
	lc.def, err = st.Marshal(sb.Context())
	require.NoError(t, err)
	_, err = c.Solve(sb.Context(), lc.def, SolveOpt{
		CacheExports: []CacheOptionsEntry{{Type: "local", Attrs: map[string]string{"dest": lc.dir, "mode": "max"}}},
	}, nil)
	require.NoError(t, err)
	lc.layers = requireCompleteCache(t, lc.dir)
	require.Len(t, lc.layers, 3)
	ensurePruneAll(t, c, sb)
	return lc
}

// rotate is the GitHub Actions guide's step: import the directory, export
// to a new one with mode=max.
func (lc *linkedCache) rotate(dest string) SolveOpt {
	return SolveOpt{
		CacheImports: []CacheOptionsEntry{{Type: "local", Attrs: map[string]string{"src": lc.dir}}},
		CacheExports: []CacheOptionsEntry{{Type: "local", Attrs: map[string]string{"dest": dest, "mode": "max"}}},
	}
}

// requireCompleteCache checks that every blob the index of the cache
// directory dir references is there with the right size and digest, and
// returns the layers of its one cache manifest.
func requireCompleteCache(t *testing.T, dir string) []digest.Digest {
	read := func(desc ocispecs.Descriptor) []byte {
		dt, err := os.ReadFile(filepath.Join(dir, "blobs", desc.Digest.Algorithm().String(), desc.Digest.Encoded()))
		require.NoError(t, err, "blob %s", desc.Digest)
		require.Equal(t, desc.Digest, digest.FromBytes(dt), "blob %s", desc.Digest)
		require.Equal(t, desc.Size, int64(len(dt)), "blob %s", desc.Digest)
		return dt
	}
	var idx ocispecs.Index
	dt, err := os.ReadFile(filepath.Join(dir, "index.json"))
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(dt, &idx))
	require.Len(t, idx.Manifests, 1)
	var mfst ocispecs.Manifest
	require.NoError(t, json.Unmarshal(read(idx.Manifests[0]), &mfst))
	read(mfst.Config)
	var layers []digest.Digest
	for _, l := range mfst.Layers {
		read(l)
		layers = append(layers, l.Digest)
	}
	return layers
}

// sameBlob tells whether the blob dgst of the directories a and b is one
// file.
func sameBlob(t *testing.T, a, b string, dgst digest.Digest) bool {
	var fis []os.FileInfo
	for _, dir := range []string{a, b} {
		fi, err := os.Stat(filepath.Join(dir, "blobs", dgst.Algorithm().String(), dgst.Encoded()))
		require.NoError(t, err)
		fis = append(fis, fi)
	}
	return os.SameFile(fis[0], fis[1])
}

// sessionBytes counts the bytes that a client's sessions send to the daemon
// (blobs the daemon reads from the client's stores, among others) and
// receive from it (blobs it writes there).
type sessionBytes struct {
	sent, received atomic.Int64
}

func newCountingClient(t *testing.T, sb integration.Sandbox) (*Client, *sessionBytes) {
	b := &sessionBytes{}
	var c *Client
	c, err := New(sb.Context(), sb.Address(), WithSessionDialer(func(ctx context.Context, proto string, meta map[string][]string) (net.Conn, error) {
		conn, err := grpchijack.Dialer(c.ControlClient())(ctx, proto, meta)
		if err != nil {
			return nil, err
		}
		return &countingConn{Conn: conn, b: b}, nil
	}))
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return c, b
}

type countingConn struct {
	net.Conn
	b *sessionBytes
}

func (c *countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.b.received.Add(int64(n))
	return n, err
}

func (c *countingConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.b.sent.Add(int64(n))
	return n, err
}
