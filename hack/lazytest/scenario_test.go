package lazytest

import (
	"crypto/sha256"
	"fmt"
	"path/filepath"
	"testing"

	"github.com/moby/buildkit/client"
	"github.com/moby/buildkit/client/llb"
	"github.com/moby/buildkit/util/testutil/integration"
	ocispecs "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/stretchr/testify/require"
	"github.com/tonistiigi/fsutil"
)

const (
	dataLayers = 3
	layerSize  = 64 << 10
)

// scenario is a small base image (busybox and generated layers) in the
// sandbox's registry, a build on top of it whose cache was exported with
// mode=max to dir, and a daemon pruned back to empty, as a CI builder
// starts.
type scenario struct {
	c     *client.Client
	sb    integration.Sandbox
	files map[string][]byte
	// built is the base image with a RUN that writes /sum, the sha256sum
	// of the data files.
	built llb.State
	dir   string
	desc  ocispecs.Descriptor
	mfst  ocispecs.Manifest
}

func newScenario(t *testing.T, sb integration.Sandbox) *scenario {
	t.Helper()
	c := newClient(t, sb)
	layers := smallLayers(dataLayers, layerSize)
	ref := pushBase(t, sb, c, layers)
	return &scenario{
		c:     c,
		sb:    sb,
		files: flatten(layers...),
		built: llb.Image(ref).Run(llb.Args([]string{"/bin/sh", "-c", "cat /data/* | sha256sum > /sum"}), llb.WithCustomName("checksum data")).Root(),
		dir:   filepath.Join(t.TempDir(), "cache"),
	}
}

// seed exports the cache of st to the scenario's directory with mode=max,
// and prunes the daemon back to empty.
func (s *scenario) seed(t *testing.T, st llb.State, locals map[string]fsutil.FS) {
	t.Helper()
	_, err := s.c.Solve(s.sb.Context(), marshal(t, s.sb, st), client.SolveOpt{
		LocalMounts:  locals,
		CacheExports: []client.CacheOptionsEntry{{Type: "local", Attrs: map[string]string{"dest": s.dir, "mode": "max"}}},
	}, nil)
	require.NoError(t, err)
	s.desc, s.mfst = cacheManifest(t, s.dir)
	require.NotEmpty(t, s.mfst.Layers)
	pruneAll(t, s.c, s.sb)
}

func (s *scenario) imports(lazy bool, store *countingStore) importOpts {
	o := importOpts{dir: s.dir, digest: s.desc.Digest, lazy: lazy}
	if store != nil {
		o.store = store
	}
	return o
}

// lazyImport is SolveOpt.CacheImports for the scenario's directory with
// lazy=true, served by the client itself, as buildctl does.
func (s *scenario) lazyImport() []client.CacheOptionsEntry {
	return []client.CacheOptionsEntry{{Type: "local", Attrs: map[string]string{"src": s.dir, "lazy": "true"}}}
}

// wantSum is what the scenario's RUN writes to /sum.
func (s *scenario) wantSum() string {
	h := sha256.New()
	for i := 1; i <= dataLayers; i++ {
		h.Write(s.files[fmt.Sprintf("/data/layer%d", i)])
	}
	return fmt.Sprintf("%x  -\n", h.Sum(nil))
}

// copySum is the scenario's build plus an uncached RUN that mounts every
// imported layer and copies /sum to /out-sum.
func (s *scenario) copySum() llb.State {
	return s.built.Run(llb.Args([]string{"/bin/sh", "-c", "cp /sum /out-sum"}), llb.IgnoreCache).Root()
}
