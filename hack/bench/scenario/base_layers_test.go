package scenario

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// Every layer directory gets files and a COPY of its own.
func TestBaseContextLayers(t *testing.T) {
	_, err := exec.LookPath("busybox")
	require.NoError(t, err, "busybox in PATH: apt-get install busybox-static (make deps)")
	dir := t.TempDir()
	_, layers, _, err := prepareBaseContext(context.Background(), dir, 3*MB, 12)
	require.NoError(t, err)
	require.Equal(t, 13, layers, "12 layers of files and the rootfs")
	df, err := os.ReadFile(filepath.Join(dir, "Dockerfile"))
	require.NoError(t, err)
	require.Equal(t, 13, strings.Count(string(df), "\nCOPY "), "%s", df)
	for i := 1; i <= 12; i++ {
		entries, err := os.ReadDir(filepath.Join(dir, fmt.Sprint("layer", i), "opt", "base", fmt.Sprint(i)))
		require.NoError(t, err, "layer %d", i)
		require.NotEmpty(t, entries, "layer %d", i)
	}
}

func TestMakeBaseLayersInvalid(t *testing.T) {
	_, err := MakeBaseLayers(context.Background(), Tools{}, nil, "", t.TempDir(), "base", MB, 1, nil)
	require.EqualError(t, err, "a base image of 1 layers: want at least 2, the rootfs and one of files")
}
