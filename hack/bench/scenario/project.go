package scenario

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/pkg/errors"
)

// Case is one rebuild scenario: what the Dockerfile looks like, whether a
// source file changes between build 1 and build 2, and what build 2
// outputs.
type Case struct {
	Name   string // short name, as flags take it
	Title  string // as tables show it
	Link   bool   // the last step is COPY --link . ./ instead of COPY . ./
	Change bool   // a source file changes between build 1 and build 2
	OCI    bool   // build 2 exports the image: --output type=oci
	// NewDir: build 2 exports the cache to a new directory instead of the
	// one it imports (a CI cache rotated on every run).
	NewDir bool
	// Reset: build 2 exports the cache into the directory it imports with
	// reset=true, which deletes the blobs the new export does not use.
	Reset bool
}

// Cases are the benchmark's rows; the demo runs the first three.
var Cases = []Case{
	{Name: "report", Title: "report's Dockerfile (COPY . ./ changed)", Change: true},
	{Name: "link", Title: "COPY --link . ./ changed", Link: true, Change: true},
	{Name: "cached", Title: "all steps cached"},
	{Name: "oci", Title: "all cached + --output type=oci", OCI: true},
	{Name: "newdir", Title: "all cached, cache exported to a new directory", NewDir: true},
	{Name: "reset", Title: "all cached, cache exported with reset=true", Reset: true},
}

// CaseByName finds a case by its short name.
func CaseByName(name string) (Case, error) {
	var names []string
	for _, c := range Cases {
		if c.Name == name {
			return c, nil
		}
		names = append(names, c.Name)
	}
	return Case{}, errors.Errorf("unknown case %q (want one of %s)", name, strings.Join(names, ", "))
}

// Dockerfile is the report's shape: a big base, RUN steps that do not
// depend on the sources, then the sources copied in last.
func Dockerfile(baseRef string, link bool) string {
	copyFlag := ""
	if link {
		copyFlag = "--link "
	}
	return fmt.Sprintf(`FROM %s
WORKDIR /app
RUN mkdir -p deps && echo "dependencies installed" > deps/STAMP
RUN ls /opt/base > deps/base-layers.txt && wc -l deps/base-layers.txt
COPY %s. ./
`, baseRef, copyFlag)
}

// Project is the build context of one Dockerfile variant.
type Project struct {
	Dir  string
	Link bool
}

// WriteProject writes the Dockerfile and a few source files to dir.
func WriteProject(dir, baseRef string, link bool) (*Project, error) {
	files := map[string]string{
		"Dockerfile":        Dockerfile(baseRef, link),
		"README.md":         "# app\n\nA stand-in for the sources of the report's project.\n",
		"src/main.sh":       "#!/bin/sh\necho \"app $(cat /app/src/version.txt)\"\n",
		"src/lib/util.sh":   "say() { echo \"$@\"; }\n",
		"src/version.txt":   "revision 0\n",
		"config/app.conf":   "listen = 8080\n",
		"docs/CHANGELOG.md": "- initial\n",
	}
	if err := WriteFiles(dir, files); err != nil {
		return nil, err
	}
	p := &Project{Dir: dir, Link: link}
	return p, p.SetRevision(0)
}

// WriteFiles writes files, named by their paths relative to dir, creating
// the directories they need.
func WriteFiles(dir string, files map[string]string) error {
	for name, body := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return errors.WithStack(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			return errors.WithStack(err)
		}
	}
	return nil
}

// SetRevision rewrites the one source file that changes between builds;
// revision 0 is the state of build 1. The file's times follow the
// revision, so going back to 0 restores exactly what build 1 saw.
func (p *Project) SetRevision(n int) error {
	path := filepath.Join(p.Dir, "src", "version.txt")
	if err := os.WriteFile(path, fmt.Appendf(nil, "revision %d\n", n), 0o644); err != nil {
		return errors.WithStack(err)
	}
	t := time.Unix(1700000000+int64(n), 0)
	return errors.WithStack(os.Chtimes(path, t, t))
}

// Cache is a pair of --import-cache and --export-cache values.
type Cache struct {
	Import string
	Export string
}

// LocalCache is the report's flags: one directory imported and exported,
// mode=max, with or without lazy=true.
func LocalCache(dir string, lazy bool) Cache {
	c := Cache{
		Import: "type=local,src=" + dir,
		Export: "type=local,dest=" + dir + ",mode=max",
	}
	if lazy {
		c.Import += ",lazy=true"
	}
	return c
}

// LocalCache returns the cache flags of build 2 of case c on the local directory
// dir: the report's, except where the cache is exported to.
func (c Case) LocalCache(dir string, lazy bool) Cache {
	cache := LocalCache(dir, lazy)
	switch {
	case c.NewDir:
		cache.Export = "type=local,dest=" + NewDir(dir) + ",mode=max"
	case c.Reset:
		cache.Export += ",reset=true"
	}
	return cache
}

// NewDir is where a NewDir case exports the cache it imported from dir.
func NewDir(dir string) string { return dir + "-new" }

// RegistryCache imports from one ref and exports to another (the same
// repository, so exported layers that are already there are not copied).
func RegistryCache(importRef, exportRef string) Cache {
	return Cache{
		Import: "type=registry,ref=" + importRef,
		Export: "type=registry,ref=" + exportRef + ",mode=max",
	}
}

// Args returns the buildctl arguments of one build of p.
func (p *Project) Args(c Cache, output string) []string {
	args := []string{
		"build", "--progress=plain",
		"--frontend=dockerfile.v0",
		"--local", "context=" + p.Dir,
		"--local", "dockerfile=" + p.Dir,
	}
	if c.Export != "" {
		args = append(args, "--export-cache", c.Export)
	}
	if c.Import != "" {
		args = append(args, "--import-cache", c.Import)
	}
	if output != "" {
		args = append(args, "--output", output)
	}
	return args
}
