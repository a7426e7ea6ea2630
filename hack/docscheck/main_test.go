package main

import (
	"os"
	"path/filepath"
	"sort"
	"testing"
)

func write(t *testing.T, dir, name, text string) {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
}

// Each kind of name fails when what it names is gone, and passes when it
// is there.
func TestCheck(t *testing.T) {
	repo, tree := t.TempDir(), t.TempDir()
	write(t, repo, "Makefile", "build: tree\n\tgo build -o bin/ ./cmd\ntest-docs:\n")
	write(t, repo, "hack/run", "#!/bin/sh\necho \"$IMAGE_NAME\"\n")
	write(t, repo, "hack/x_test.go", "package x\n\nfunc testLocalThing(t *testing.T) {}\nfunc TestUnit(t *testing.T) {}\n")
	write(t, tree, "cache/manager.go", "package cache\n\nfunc (cm *cacheManager) GetByBlob() {}\n")
	write(t, repo, "docs/page.md", "x\n")
	doc := "See `hack/run`, `cache/manager.go:372-380`, [page](page.md) and `bin/buildkitd`.\n" +
		"Run `make build test-docs` with `IMAGE_NAME=me/bk`; TestLocalThing and TestUnit pass.\n" +
		"Not ours: `DIR/index.json`, `core/remotes/handlers.go`, `series/NN-name/`.\n" +
		"```\nmake build  # then make it faster\n# make sure\n```\n" +
		"Gone: `hack/gone`, [gone](gone.md), `make nothing`, `NO_SUCH_VAR=1`, TestGone.\n"
	idx, err := newIndex(repo, tree)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range extract("docs/doc.md", doc) {
		if msg := idx.check("docs/doc.md", r); msg != "" {
			got = append(got, msg)
		}
	}
	sort.Strings(got)
	want := []string{
		"make nothing: no such target in the Makefile",
		"path gone.md does not exist",
		"path hack/gone does not exist",
		"test TestGone: no such func",
		"variable NO_SUCH_VAR: no script, Makefile or code reads it",
	}
	if len(got) != len(want) {
		t.Fatalf("got %q, want %q", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("got %q, want %q", got, want)
		}
	}
}
