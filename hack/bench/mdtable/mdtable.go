// Package mdtable renders the tables the demo prints and the benchmark
// writes: GitHub Markdown for docs, aligned plain text for a terminal.
package mdtable

import (
	"strings"
	"unicode/utf8"
)

// Table is a header and rows of cells. Rows shorter than the header are
// padded with empty cells; longer ones are cut to the header's width.
type Table struct {
	Header []string
	Rows   [][]string
}

// AddRow appends one row.
func (t *Table) AddRow(cells ...string) {
	t.Rows = append(t.Rows, cells)
}

func (t Table) row(r []string) []string {
	out := make([]string, len(t.Header))
	copy(out, r)
	return out
}

// Markdown renders the table as GitHub Markdown. A "|" in a cell is escaped
// so it cannot split the cell; newlines become <br>.
func (t Table) Markdown() string {
	var b strings.Builder
	esc := strings.NewReplacer("|", `\|`, "\n", "<br>")
	line := func(cells []string) {
		b.WriteString("|")
		for _, c := range cells {
			b.WriteString(" ")
			b.WriteString(esc.Replace(c))
			b.WriteString(" |")
		}
		b.WriteString("\n")
	}
	line(t.Header)
	sep := make([]string, len(t.Header))
	for i := range sep {
		sep[i] = "---"
	}
	line(sep)
	for _, r := range t.Rows {
		line(t.row(r))
	}
	return b.String()
}

// Text renders the table with columns padded to their widest cell, for a
// terminal.
func (t Table) Text() string {
	rows := append([][]string{t.Header}, make([][]string, 0, len(t.Rows))...)
	for _, r := range t.Rows {
		rows = append(rows, t.row(r))
	}
	width := make([]int, len(t.Header))
	for _, r := range rows {
		for i, c := range r {
			width[i] = max(width[i], utf8.RuneCountInString(c))
		}
	}
	var b strings.Builder
	write := func(r []string) {
		for i, c := range r {
			if i > 0 {
				b.WriteString("  ")
			}
			b.WriteString(c)
			if i < len(r)-1 {
				b.WriteString(strings.Repeat(" ", width[i]-utf8.RuneCountInString(c)))
			}
		}
		b.WriteString("\n")
	}
	write(rows[0])
	rule := make([]string, len(width))
	for i, w := range width {
		rule[i] = strings.Repeat("-", w)
	}
	write(rule)
	for _, r := range rows[1:] {
		write(r)
	}
	return b.String()
}
