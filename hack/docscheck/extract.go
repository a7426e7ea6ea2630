package main

import (
	"regexp"
	"strings"
)

type refKind int

const (
	refPath refKind = iota
	refTarget
	refVar
	refTest
)

// ref is a name a document uses, and the line it is on.
type ref struct {
	kind refKind
	name string
	line int
	link bool // a Markdown link target, relative to the document
}

var (
	spanRe   = regexp.MustCompile("`([^`\n]+)`")
	linkRe   = regexp.MustCompile(`\]\(([^)\s]+)\)`)
	makeRe   = regexp.MustCompile(`(?:^|[;&|(]\s*|^\$\s+)make((?:\s+[a-z][a-z0-9-]*(?:/[a-z0-9.-]+)*)+)`)
	varRe    = regexp.MustCompile(`(?:^|[\s'"(])([A-Z][A-Z0-9]*_[A-Z0-9_]+|[A-Z]{4,}[A-Z0-9]*)=|\$\{?([A-Z][A-Z0-9]*_[A-Z0-9_]+)`)
	testRe   = regexp.MustCompile(`\b((?:Test|test|Benchmark)[A-Z][A-Za-z0-9_]*)\b`)
	pathRe   = regexp.MustCompile(`^[A-Za-z0-9_.-]+(?:/[A-Za-z0-9_.*<>-]+)+/?$|^[A-Za-z0-9_-]+\.(?:go|md|sh|diff|txt|mod|png)$|^Makefile$`)
	lineRefs = regexp.MustCompile(`:\d+(?:-\d+)?(?:,\d+(?:-\d+)?)*$`)
)

// extract returns the names doc uses: paths in code spans, code blocks and
// links; make targets and variables in code; test names anywhere.
func extract(doc, text string) []ref {
	var refs []ref
	inBlock := false
	for i, l := range strings.Split(text, "\n") {
		n := i + 1
		if strings.HasPrefix(strings.TrimSpace(l), "```") {
			inBlock = !inBlock
			continue
		}
		var code []string
		if inBlock {
			// A shell comment is prose: "# make image first" names no target.
			if i := strings.Index(l, " #"); i >= 0 {
				l = l[:i]
			} else if strings.HasPrefix(strings.TrimSpace(l), "#") {
				l = ""
			}
			code = []string{l}
		} else {
			for _, m := range spanRe.FindAllStringSubmatch(l, -1) {
				code = append(code, m[1])
			}
			for _, m := range linkRe.FindAllStringSubmatch(l, -1) {
				t := m[1]
				if strings.Contains(t, "://") || strings.HasPrefix(t, "#") || strings.HasPrefix(t, "mailto:") {
					continue
				}
				t = strings.SplitN(t, "#", 2)[0]
				refs = append(refs, ref{kind: refPath, name: t, line: n, link: true})
			}
		}
		for _, c := range code {
			for _, m := range makeRe.FindAllStringSubmatch(c, -1) {
				for _, t := range strings.Fields(m[1]) {
					if strings.Contains(t, "/") {
						refs = append(refs, ref{kind: refPath, name: t, line: n})
						continue
					}
					refs = append(refs, ref{kind: refTarget, name: t, line: n})
				}
			}
			for _, m := range varRe.FindAllStringSubmatch(c, -1) {
				v := m[1] + m[2]
				refs = append(refs, ref{kind: refVar, name: v, line: n})
			}
			for _, w := range strings.FieldsFunc(c, func(r rune) bool {
				return r == ' ' || r == '\t' || r == '(' || r == ')' || r == ',' || r == ';' || r == '"' || r == '\'' || r == '='
			}) {
				w = strings.TrimSuffix(lineRefs.ReplaceAllString(w, ""), ":")
				w = strings.TrimSuffix(w, ".")
				if strings.Contains(w, "://") || strings.HasPrefix(w, "/") || strings.HasPrefix(w, "-") || strings.Contains(w, "@") || strings.Contains(w, "$") {
					continue
				}
				if pathRe.MatchString(w) {
					refs = append(refs, ref{kind: refPath, name: w, line: n})
				}
			}
		}
		for _, m := range testRe.FindAllStringSubmatch(l, -1) {
			refs = append(refs, ref{kind: refTest, name: m[1], line: n})
		}
	}
	return refs
}
