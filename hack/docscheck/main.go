// Command docscheck checks that what the README, docs/ and the pull
// requests' covers name exists: every file path, make target, environment
// variable and test name in their code spans and links. make test runs it
// (make test-docs); a renamed test or file then fails it.
//
//	go run . -repo ../.. -tree ../../build/buildkit README.md docs/*.md series/*/cover
//
// Where a name is looked for:
//   - a path: in the repository, or in the tree (upstream's source with
//     the series, for upstream paths); a path under bin/, dist/ or build/
//     is made by make, so its first directory is enough;
//   - `make NAME`: a target of the Makefile;
//   - an environment variable (VAR=value, $VAR, ${VAR}): named in a file
//     of the repository other than the docs;
//   - TestXxx, testXxx, BenchmarkXxx: a func in a Go file of the
//     repository or the tree.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
)

func main() {
	repo := flag.String("repo", ".", "repository root")
	tree := flag.String("tree", "", "upstream's source with the series (hack/tree)")
	flag.Parse()
	if flag.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "docscheck: name the documents to check")
		os.Exit(2)
	}
	idx, err := newIndex(*repo, *tree)
	if err != nil {
		fmt.Fprintln(os.Stderr, "docscheck:", err)
		os.Exit(2)
	}
	var problems []string
	for _, doc := range flag.Args() {
		dt, err := os.ReadFile(filepath.Join(*repo, doc))
		if err != nil {
			fmt.Fprintln(os.Stderr, "docscheck:", err)
			os.Exit(2)
		}
		for _, r := range extract(doc, string(dt)) {
			if msg := idx.check(doc, r); msg != "" {
				problems = append(problems, fmt.Sprintf("%s:%d: %s", doc, r.line, msg))
			}
		}
	}
	sort.Strings(problems)
	for _, p := range problems {
		fmt.Println(p)
	}
	if len(problems) > 0 {
		fmt.Fprintf(os.Stderr, "docscheck: %d names above do not exist\n", len(problems))
		os.Exit(1)
	}
	fmt.Printf("docscheck: every path, make target, variable and test in %d documents exists\n", flag.NArg())
}

// index is what exists: files of the repository and the tree, make
// targets, the text of the repository's non-doc files, Go funcs.
type index struct {
	repo, tree string
	targets    map[string]bool
	funcs      map[string]bool
	code       string // the repository's files other than docs, for variables
}

func newIndex(repo, tree string) (*index, error) {
	idx := &index{repo: repo, tree: tree, targets: map[string]bool{}, funcs: map[string]bool{}}
	mk, err := os.ReadFile(filepath.Join(repo, "Makefile"))
	if err != nil {
		return nil, err
	}
	for _, l := range strings.Split(string(mk), "\n") {
		if i := strings.Index(l, ":"); i > 0 && !strings.HasPrefix(l, "\t") && !strings.Contains(l[:i], "=") && !strings.HasPrefix(l, "#") {
			for _, t := range strings.Fields(l[:i]) {
				idx.targets[t] = true
			}
		}
	}
	var code strings.Builder
	for _, root := range []string{repo, tree} {
		if root == "" {
			continue
		}
		err := filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
			if err != nil {
				return err
			}
			rel, _ := filepath.Rel(root, p)
			if d.IsDir() {
				if d.Name() == ".git" || (root == repo && (rel == "build" || rel == "dist" || rel == "bin")) || d.Name() == "vendor" {
					return filepath.SkipDir
				}
				return nil
			}
			if strings.HasSuffix(p, ".go") {
				dt, err := os.ReadFile(p)
				if err != nil {
					return err
				}
				for _, l := range strings.Split(string(dt), "\n") {
					if name, ok := funcName(l); ok {
						idx.funcs[name] = true
					}
				}
				if root == repo {
					code.Write(dt)
				}
				return nil
			}
			if root == repo && !strings.HasSuffix(p, ".md") && !strings.HasPrefix(rel, "series/") && d.Type().IsRegular() {
				if fi, err := d.Info(); err == nil && fi.Size() < 1<<20 {
					dt, err := os.ReadFile(p)
					if err != nil {
						return err
					}
					code.Write(dt)
				}
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	idx.code = code.String()
	return idx, nil
}

// funcName returns the name of the func a line declares, methods included.
func funcName(l string) (string, bool) {
	if !strings.HasPrefix(l, "func ") {
		return "", false
	}
	l = strings.TrimPrefix(l, "func ")
	if strings.HasPrefix(l, "(") {
		i := strings.Index(l, ")")
		if i < 0 {
			return "", false
		}
		l = strings.TrimSpace(l[i+1:])
	}
	i := strings.IndexAny(l, "([")
	if i <= 0 {
		return "", false
	}
	return l[:i], true
}

func (idx *index) exists(rel string) bool {
	for _, root := range []string{idx.repo, idx.tree} {
		if root == "" {
			continue
		}
		if _, err := os.Stat(filepath.Join(root, rel)); err == nil {
			return true
		}
	}
	return false
}

var placeholderRe = regexp.MustCompile(`(^|/)[A-Z]{2,}([-_/]|$)`)

func (idx *index) check(doc string, r ref) string {
	switch r.kind {
	case refPath:
		p := r.name
		// A link is relative to the document that holds it.
		if r.link {
			p = filepath.Join(filepath.Dir(doc), p)
		}
		p = filepath.Clean(p)
		first := strings.SplitN(p, string(filepath.Separator), 2)[0]
		if placeholderRe.MatchString(r.name) {
			return "" // series/NN-name, DIR/blobs
		}
		if !r.link {
			if strings.HasPrefix(r.name, "./") {
				return "" // relative to a directory the text names
			}
			// In code, only what starts at a top directory of the
			// repository or the tree is taken for a path of ours:
			// DIR/index.json, core/remotes/handlers.go (containerd's) are not.
			if !strings.Contains(p, string(filepath.Separator)) {
				return ""
			}
			if first != "bin" && first != "dist" && first != "build" && !idx.exists(first) {
				return ""
			}
		}
		switch first {
		case "bin", "dist", "build":
			// Made by make: the Makefile must name where.
			if !strings.Contains(idx.code, first+"/") {
				return fmt.Sprintf("path %s: nothing makes %s/", r.name, first)
			}
			return ""
		}
		if strings.ContainsAny(p, "*?<>") {
			if m, _ := filepath.Glob(filepath.Join(idx.repo, p)); len(m) > 0 {
				return ""
			}
			if idx.tree != "" {
				if m, _ := filepath.Glob(filepath.Join(idx.tree, p)); len(m) > 0 {
					return ""
				}
			}
			if strings.ContainsAny(p, "<>") {
				return "" // a placeholder such as series/NN-name
			}
			return fmt.Sprintf("path %s matches nothing", r.name)
		}
		if !idx.exists(p) {
			return fmt.Sprintf("path %s does not exist", r.name)
		}
	case refTarget:
		if !idx.targets[r.name] {
			return fmt.Sprintf("make %s: no such target in the Makefile", r.name)
		}
	case refVar:
		if !strings.Contains(idx.code, r.name) {
			return fmt.Sprintf("variable %s: no script, Makefile or code reads it", r.name)
		}
	case refTest:
		// The integration framework names testXxx TestXxx.
		if !idx.funcs[r.name] && !(strings.HasPrefix(r.name, "Test") && idx.funcs["test"+strings.TrimPrefix(r.name, "Test")]) {
			return fmt.Sprintf("test %s: no such func", r.name)
		}
	}
	return ""
}
