// Command overlay writes the `go build -overlay` file that swaps the packages
// this repository owns into upstream BuildKit's vendored source.
//
// For every owned package path P it maps each non-test Go file of ./P onto
// vendor/github.com/moby/buildkit/P. It fails when the vendored package is
// absent, when ours has no Go files, or when the vendored package holds a
// file ours does not replace: such a file would be compiled into our package
// silently, mixing upstream's code with ours.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

const upstreamModule = "github.com/moby/buildkit"

// overlayFile is the JSON format `go build -overlay` reads.
type overlayFile struct {
	Replace map[string]string
}

func main() {
	root := flag.String("root", ".", "repository root holding our packages and vendor/")
	out := flag.String("o", "", "file to write the overlay to (default stdout)")
	flag.Parse()
	if flag.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "usage: overlay [-root DIR] [-o FILE] PKG...  (PKG as cache/remotecache/local)")
		os.Exit(2)
	}
	ov, err := build(*root, flag.Args())
	if err != nil {
		fmt.Fprintln(os.Stderr, "overlay:", err)
		os.Exit(1)
	}
	dt, err := json.MarshalIndent(ov, "", "  ")
	if err != nil {
		fmt.Fprintln(os.Stderr, "overlay:", err)
		os.Exit(1)
	}
	dt = append(dt, '\n')
	if *out == "" {
		os.Stdout.Write(dt)
		return
	}
	if err := os.WriteFile(*out, dt, 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "overlay:", err)
		os.Exit(1)
	}
}

func build(root string, pkgs []string) (*overlayFile, error) {
	root, err := filepath.Abs(root)
	if err != nil {
		return nil, err
	}
	ov := &overlayFile{Replace: map[string]string{}}
	for _, pkg := range pkgs {
		ours := filepath.Join(root, filepath.FromSlash(pkg))
		theirs := filepath.Join(root, "vendor", filepath.FromSlash(upstreamModule), filepath.FromSlash(pkg))
		ourFiles, err := goFiles(ours)
		if err != nil {
			return nil, fmt.Errorf("our package %s: %w", pkg, err)
		}
		if len(ourFiles) == 0 {
			return nil, fmt.Errorf("our package %s has no Go files in %s", pkg, ours)
		}
		upFiles, err := goFiles(theirs)
		if err != nil {
			return nil, fmt.Errorf("vendored upstream package %s/%s (run go mod vendor; is it imported by cmd/buildkitd?): %w", upstreamModule, pkg, err)
		}
		for _, f := range upFiles {
			if !slices.Contains(ourFiles, f) {
				return nil, fmt.Errorf("upstream %s/%s has %s, which our package does not replace; write ours or rename a file of ours to match", upstreamModule, pkg, f)
			}
		}
		others, err := otherFiles(theirs)
		if err != nil {
			return nil, err
		}
		if len(others) > 0 {
			return nil, fmt.Errorf("upstream %s/%s holds files an overlay cannot account for: %s", upstreamModule, pkg, strings.Join(others, ", "))
		}
		for _, f := range ourFiles {
			ov.Replace[filepath.Join(theirs, f)] = filepath.Join(ours, f)
		}
	}
	return ov, nil
}

// goFiles lists the non-test Go files directly in dir.
func goFiles(dir string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range ents {
		n := e.Name()
		if e.Type().IsRegular() && strings.HasSuffix(n, ".go") && !strings.HasSuffix(n, "_test.go") {
			out = append(out, n)
		}
	}
	return out, nil
}

// otherFiles lists what dir holds besides Go files: assembly, cgo sources or
// embedded data would be compiled with our package unseen.
func otherFiles(dir string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range ents {
		if !strings.HasSuffix(e.Name(), ".go") {
			out = append(out, e.Name())
		}
	}
	return out, nil
}
