package client

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/moby/buildkit/client/llb"
	"github.com/moby/buildkit/util/testutil/integration"
	"github.com/moby/buildkit/util/testutil/workers"
	"github.com/stretchr/testify/require"
)

// testLazyLocalCacheImportDirectoryChanges checks that a build importing a
// directory lazily reads the imported cache as it was when the build
// started, while another job deletes its layer blobs, replaces the
// directory by another one, or exports to it with reset=true.
//
// The step the build reuses writes random bytes: had its record been
// dropped and the step run again, the build would see other bytes.
func testLazyLocalCacheImportDirectoryChanges(t *testing.T, sb integration.Sandbox) {
	integration.SkipOnPlatform(t, "windows")
	workers.CheckFeatureCompat(t, sb, workers.FeatureCacheExport, workers.FeatureCacheImport, workers.FeatureCacheBackendLocal, workers.FeatureMergeDiff)
	c, err := New(sb.Context(), sb.Address())
	require.NoError(t, err)
	defer c.Close()

	stamped := llb.Image("busybox:latest").Run(llb.Shlex(`sh -c "head -c 32 /dev/urandom | od -x > /stamp"`)).Root()
	other, err := llb.Image("busybox:latest").Run(llb.Shlex(`sh -c "echo other job > /other"`)).Root().Marshal(sb.Context())
	require.NoError(t, err)
	exportOther := func(t *testing.T, dir string, reset bool) {
		attrs := map[string]string{"dest": dir, "mode": "max"}
		if reset {
			attrs["reset"] = "true"
		}
		_, err := c.Solve(sb.Context(), other, SolveOpt{CacheExports: []CacheOptionsEntry{{Type: "local", Attrs: attrs}}}, nil)
		require.NoError(t, err)
	}

	// The layers of the build's cache that the other job's does not share.
	otherDir := filepath.Join(t.TempDir(), "other")
	exportOther(t, otherDir, false)
	_, otherLayers := readLocalCacheManifest(t, otherDir)

	for _, change := range []string{"delete", "rotate", "reset"} {
		t.Run(change, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "cache")
			def, err := stamped.Marshal(sb.Context())
			require.NoError(t, err)
			seedOut := t.TempDir()
			_, err = c.Solve(sb.Context(), def, SolveOpt{
				Exports:      []ExportEntry{{Type: ExporterLocal, OutputDir: seedOut}},
				CacheExports: []CacheOptionsEntry{{Type: "local", Attrs: map[string]string{"dest": dir, "mode": "max"}}},
			}, nil)
			require.NoError(t, err)
			stamp, err := os.ReadFile(filepath.Join(seedOut, "stamp"))
			require.NoError(t, err)
			_, layers := readLocalCacheManifest(t, dir)
			ensurePruneAll(t, c, sb)

			delayed, started, releaseB := newDelayedSource(t)
			merged := llb.Merge([]llb.State{stamped, delayed})
			def, err = llb.Scratch().File(llb.Copy(merged, "/stamp", "/stamp")).Marshal(sb.Context())
			require.NoError(t, err)
			out := t.TempDir()
			done := make(chan error, 1)
			go func() {
				_, err := c.Solve(sb.Context(), def, SolveOpt{
					Exports:      []ExportEntry{{Type: ExporterLocal, OutputDir: out}},
					CacheImports: []CacheOptionsEntry{{Type: "local", Attrs: map[string]string{"src": dir, "lazy": "true"}}},
				}, nil)
				done <- err
			}()
			select {
			case <-started:
			case err := <-done:
				t.Fatalf("%s: the build ended before its delayed step: %v", change, err)
			}

			switch change {
			case "delete":
				for _, l := range layers {
					require.NoError(t, os.Remove(filepath.Join(dir, "blobs", l.Algorithm().String(), l.Encoded())))
				}
			case "rotate":
				exportOther(t, dir+"-new", false)
				require.NoError(t, os.RemoveAll(dir))
				require.NoError(t, os.Rename(dir+"-new", dir))
			case "reset":
				exportOther(t, dir, true)
			}
			for _, l := range layers {
				if !slices.Contains(otherLayers, l) {
					_, err := os.Stat(filepath.Join(dir, "blobs", l.Algorithm().String(), l.Encoded()))
					require.ErrorIs(t, err, os.ErrNotExist, "%s: layer %s is gone from the directory", change, l)
				}
			}

			releaseB()
			require.NoError(t, <-done, change)
			dt, err := os.ReadFile(filepath.Join(out, "stamp"))
			require.NoError(t, err)
			require.Equal(t, string(stamp), string(dt), change)
		})
	}
}
