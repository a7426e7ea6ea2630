package main

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// make bench runs the command in hack/bench; the report must still land in
// the repository's docs/.
func TestResolvePathsFromNestedModule(t *testing.T) {
	repo := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(repo, "Makefile"), nil, 0o644))
	require.NoError(t, os.Mkdir(filepath.Join(repo, ".git"), 0o755))
	module := filepath.Join(repo, "hack", "bench")
	require.NoError(t, os.MkdirAll(module, 0o755))
	t.Chdir(module)

	for _, tc := range []struct {
		name     string
		in, want options
	}{
		{
			name: "defaults",
			want: options{Repo: repo, MD: filepath.Join(repo, "docs", "benchmarks.md"), PNG: filepath.Join(repo, "docs", "benchmarks.png")},
		},
		{
			name: "given paths are kept",
			in:   options{Repo: "/elsewhere", MD: "out.md", PNG: "out.png"},
			want: options{Repo: "/elsewhere", MD: "out.md", PNG: "out.png"},
		},
		{
			name: "docs follow -repo",
			in:   options{Repo: "/elsewhere"},
			want: options{Repo: "/elsewhere", MD: "/elsewhere/docs/benchmarks.md", PNG: "/elsewhere/docs/benchmarks.png"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := tc.in
			require.NoError(t, o.resolvePaths())
			require.Equal(t, tc.want, o)
		})
	}
}

// -row remote prints a table of its own and cannot share a run with the
// rows of the report.
func TestParseRowsRemoteAlone(t *testing.T) {
	_, err := parseRows("cached,remote")
	require.EqualError(t, err, "-row remote runs alone: it prints its own table")
	rows, err := parseRows("cached,report")
	require.NoError(t, err)
	require.Len(t, rows, 2)
}
