package scenario

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestGunzipEnv(t *testing.T) {
	for name, want := range map[string][]string{
		"igzip":  nil,
		"unpigz": {"CONTAINERD_DISABLE_IGZIP=1"},
		"go":     {"CONTAINERD_DISABLE_IGZIP=1", "CONTAINERD_DISABLE_PIGZ=1"},
	} {
		got, err := GunzipEnv(name)
		require.NoError(t, err, name)
		require.Equal(t, want, got, name)
	}
	_, err := GunzipEnv("pigz")
	require.EqualError(t, err, `unknown gzip decompressor "pigz" (want igzip, unpigz or go)`)
}

func TestParseDecompressorRun(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		cpu      time.Duration
	}{
		{name: "dash", in: "igzip 1000000000 3500000000 0\n0m0.001000s 0m0.002000s\n0m1.250000s 0m0.250000s\n", cpu: 1500 * time.Millisecond},
		{name: "bash", in: "unpigz 1000000000 3500000000 0\n0m0.001s 0m0.002s\n1m2.500s 0m0.500s\n", cpu: 63 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := parseDecompressorRun(tc.in)
			require.NoError(t, err)
			require.Equal(t, tc.cpu, r.CPU)
			require.Equal(t, 2500*time.Millisecond, r.End.Sub(r.Start))
			require.Zero(t, r.ExitCode)
		})
	}
	for _, bad := range []string{
		"igzip 1 2 0\n0m0s 0m0s\n",
		"igzip 1 2\n0m0.0s 0m0.0s\n0m0.0s 0m0.0s\n",
		"igzip 1 2 0\n0m0.0s 0m0.0s\n1.5s 0m0.0s\n",
	} {
		_, err := parseDecompressorRun(bad)
		require.Error(t, err, bad)
	}
}

// The shim runs the real program with its arguments, stdin and stdout, and
// records its CPU time; without SCENARIO_DECOMPRESSORS it just runs it.
func TestDecompressorShim(t *testing.T) {
	dir := t.TempDir()
	cat, err := exec.LookPath("cat")
	require.NoError(t, err)
	require.NoError(t, WriteDecompressorShims(filepath.Join(dir, "bin"), map[string]string{"unpigz": cat}))
	logs := filepath.Join(dir, "logs")
	require.NoError(t, os.Mkdir(logs, 0o755))

	cmd := exec.Command(filepath.Join(dir, "bin", "unpigz"), "-")
	cmd.Stdin = strings.NewReader("layer bytes")
	cmd.Env = append(os.Environ(), "SCENARIO_DECOMPRESSORS="+logs)
	out, err := cmd.Output()
	require.NoError(t, err)
	require.Equal(t, "layer bytes", string(out))
	runs, err := ReadDecompressorRuns(logs)
	require.NoError(t, err)
	require.Len(t, runs, 1)
	require.Equal(t, "unpigz", runs[0].Tool)
	require.Zero(t, runs[0].ExitCode)
	require.False(t, runs[0].End.Before(runs[0].Start))

	cmd = exec.Command(filepath.Join(dir, "bin", "unpigz"))
	cmd.Stdin = strings.NewReader("x")
	out, err = cmd.Output()
	require.NoError(t, err)
	require.Equal(t, "x", string(out))
	runs, err = ReadDecompressorRuns(logs)
	require.NoError(t, err)
	require.Len(t, runs, 1, "no record without SCENARIO_DECOMPRESSORS")

	require.ErrorContains(t, WriteDecompressorShims(dir, map[string]string{"igzip": "igzip"}), "want a plain absolute path")
}
