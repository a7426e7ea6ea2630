package client_test

import (
	"testing"

	"github.com/lazylocal/buildkit/util/testutil/cachetest"
	"github.com/moby/buildkit/util/testutil/workers"
)

// This file is ours only: it registers the OCI worker, which starts the
// buildkitd found in PATH (make test puts bin/ first), and fails when the
// suite's requirements are missing instead of skipping. Upstream's package
// registers its workers itself; the upstream patch adds its own entry.

func init() {
	workers.InitOCIWorker()
}

func TestLazyLocalCacheIntegration(t *testing.T) {
	cachetest.Run(t, lazyLocalCacheTests)
}
