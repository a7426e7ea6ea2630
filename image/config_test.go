package image

import (
	"context"
	"os"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestImageConfig: the root image's buildkitd.toml, which buildkitd reads
// from /etc/buildkit, turns series 05's parallel apply on, as
// image/buildkitd.toml says.
func TestImageConfig(t *testing.T) {
	e := requireEnv(t)
	want, err := os.ReadFile("buildkitd.toml")
	require.NoError(t, err)
	require.Contains(t, string(want), "\n  parallel-unpack = true\n")
	got, err := e.docker(context.Background(), "run", "--rm", "--entrypoint", "cat", e.rootImage, "/etc/buildkit/buildkitd.toml")
	require.NoError(t, err, got)
	require.Equal(t, string(want), got)
}
