package lazytest

import (
	"testing"

	"github.com/moby/buildkit/util/testutil/integration"
	"github.com/moby/buildkit/util/testutil/workers"
)

func init() {
	workers.InitOCIWorker()
}

// tests are run each on a buildkitd of its own, the first in PATH, with the
// runc worker; lists in the files that hold them add to it.
var tests []func(t *testing.T, sb integration.Sandbox)

// TestLazyLocalCache runs the suite. Every test has a daemon of its own,
// so a test's prune or corrupt directory never reaches another.
func TestLazyLocalCache(t *testing.T) {
	integration.Run(t, integration.TestFuncs(tests...),
		integration.WithMirroredImages(integration.OfficialImages("busybox:latest")))
}
