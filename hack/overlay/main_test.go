package main

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

func writeFiles(t *testing.T, root string, files ...string) {
	t.Helper()
	for _, f := range files {
		p := filepath.Join(root, filepath.FromSlash(f))
		require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o755))
		require.NoError(t, os.WriteFile(p, []byte("package x\n"), 0o644))
	}
}

const vendored = "vendor/github.com/moby/buildkit/"

func TestBuild(t *testing.T) {
	for _, tc := range []struct {
		name    string
		files   []string
		want    map[string]string
		wantErr string
	}{
		{
			name:  "replaces and adds",
			files: []string{"p/local.go", "p/provider.go", "p/local_test.go", vendored + "p/local.go"},
			want: map[string]string{
				vendored + "p/local.go":    "p/local.go",
				vendored + "p/provider.go": "p/provider.go",
			},
		},
		{
			name:    "upstream file not replaced",
			files:   []string{"p/local.go", vendored + "p/local.go", vendored + "p/extra.go"},
			wantErr: "has extra.go, which our package does not replace",
		},
		{
			name:    "ours missing",
			files:   []string{"p/local_test.go", vendored + "p/local.go"},
			wantErr: "our package p has no Go files",
		},
		{
			name:    "not vendored",
			files:   []string{"p/local.go"},
			wantErr: "vendored upstream package github.com/moby/buildkit/p",
		},
		{
			name:    "non-Go upstream file",
			files:   []string{"p/local.go", vendored + "p/local.go", vendored + "p/asm_amd64.s"},
			wantErr: "cannot account for: asm_amd64.s",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			writeFiles(t, root, tc.files...)
			ov, err := build(root, []string{"p"})
			if tc.wantErr != "" {
				require.ErrorContains(t, err, tc.wantErr)
				return
			}
			require.NoError(t, err)
			want := map[string]string{}
			for k, v := range tc.want {
				want[filepath.Join(root, k)] = filepath.Join(root, v)
			}
			require.Equal(t, want, ov.Replace)
		})
	}
}
