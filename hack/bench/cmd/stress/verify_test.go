package main

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// writeOutput lays out what build j's --output type=local holds for a base
// of files (image path to content).
func writeOutput(t *testing.T, dir string, j *job, files map[string]string) map[string]string {
	want := map[string]string{}
	var sums string
	for p, body := range files {
		require.NoError(t, os.MkdirAll(filepath.Dir(filepath.Join(dir, p)), 0o755))
		require.NoError(t, os.WriteFile(filepath.Join(dir, p), []byte(body), 0o644))
		h := sha256.Sum256([]byte(body))
		want[p] = hex.EncodeToString(h[:])
		sums += want[p] + "  " + p + "\n"
	}
	write := func(p, body string) {
		require.NoError(t, os.MkdirAll(filepath.Dir(filepath.Join(dir, p)), 0o755))
		require.NoError(t, os.WriteFile(filepath.Join(dir, p), []byte(body), 0o644))
	}
	write("job/stamp", fmt.Sprintf("round %d build %d\n", j.round, j.index))
	write("job/job.sums", sums)
	for i, v := range j.variants {
		sub := "out"
		if i > 0 {
			sub = fmt.Sprintf("common%d", v)
		}
		write(sub+"/variant", fmt.Sprintf("%d\n", v))
		write(sub+"/common.sums", sums)
	}
	return want
}

func TestCheckOutput(t *testing.T) {
	files := map[string]string{"/bin/busybox": "bb", "/opt/base/1/pass0/a": "a", "/opt/base/2/pass0/b": "b"}
	for _, tc := range []struct {
		name   string
		damage func(dir string)
		err    string
	}{
		{name: "as built"},
		{name: "base file changed", damage: func(dir string) {
			require.NoError(t, os.WriteFile(filepath.Join(dir, "opt/base/2/pass0/b"), []byte("B"), 0o644))
		}, err: "/opt/base/2/pass0/b has sha256"},
		{name: "base file missing", damage: func(dir string) {
			require.NoError(t, os.Remove(filepath.Join(dir, "opt/base/1/pass0/a")))
		}, err: "no such file"},
		{name: "stamp of another build", damage: func(dir string) {
			require.NoError(t, os.WriteFile(filepath.Join(dir, "job/stamp"), []byte("round 2 build 1\n"), 0o644))
		}, err: "job/stamp is"},
		{name: "a sum line lost", damage: func(dir string) {
			require.NoError(t, os.WriteFile(filepath.Join(dir, "common1/common.sums"), nil, 0o644))
		}, err: "missing"},
		{name: "wrong variant", damage: func(dir string) {
			require.NoError(t, os.WriteFile(filepath.Join(dir, "out/variant"), []byte("1\n"), 0o644))
		}, err: "variant is"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			j := &job{round: 2, index: 3, variants: []int{0, 1}}
			want := writeOutput(t, dir, j, files)
			if tc.damage != nil {
				tc.damage(dir)
			}
			err := checkOutput(dir, j, want)
			if tc.err == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorContains(t, err, tc.err)
		})
	}
}
