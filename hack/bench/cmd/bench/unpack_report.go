package main

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/lazylocal/buildkit/hack/bench/mdtable"
	"github.com/lazylocal/buildkit/hack/bench/scenario"
	"github.com/lazylocal/buildkit/hack/bench/stats"
	"github.com/pkg/errors"
)

// unpackTarget is the goal: the report's Dockerfile, build 2,
// rootful, lazy import on our daemon at most this fraction of the
// baseline's eager build 2 in the same run.
const unpackTarget = 0.7

func sampleOf(runs []unpackRun, f func(unpackRun) float64) stats.Sample {
	s := make(stats.Sample, len(runs))
	for i, r := range runs {
		s[i] = f(r)
	}
	return s
}

func secsOf(f func(unpackRun) time.Duration) func(unpackRun) float64 {
	return func(r unpackRun) float64 { return f(r).Seconds() }
}

var (
	uBuild   = secsOf(func(r unpackRun) time.Duration { return r.Build })
	uBusy    = secsOf(func(r unpackRun) time.Duration { return r.Extracted.Busy() })
	uSum     = secsOf(func(r unpackRun) time.Duration { return r.Extracted.Sum() })
	uLargest = secsOf(func(r unpackRun) time.Duration { return r.Extracted.Largest() })
	uRest    = secsOf(func(r unpackRun) time.Duration { return r.rest() })
	uBefore  = secsOf(func(r unpackRun) time.Duration { b, _ := r.beforeAfter(); return b })
	uAfter   = secsOf(func(r unpackRun) time.Duration { _, a := r.beforeAfter(); return a })
	uDaemon  = secsOf(func(r unpackRun) time.Duration { return r.Usage.CPU })
	uSys     = secsOf(func(r unpackRun) time.Duration { return r.Usage.SysCPU })
	uChild   = secsOf(func(r unpackRun) time.Duration { return r.Usage.ChildCPU })
	uDecomp  = secsOf(func(r unpackRun) time.Duration { return r.decompCPU() })
	uCPU     = secsOf(func(r unpackRun) time.Duration { return r.cpu() })
	uBound   = func(n int) func(unpackRun) float64 {
		return secsOf(func(r unpackRun) time.Duration { return r.bound(n) })
	}
	uLayers  = func(r unpackRun) float64 { return float64(len(r.Extracted.Layers)) }
	uDecRuns = func(r unpackRun) float64 { return float64(len(r.Decomp)) }
	uWritten = func(r unpackRun) float64 { return float64(r.Usage.WriteBytes) / scenario.MB }
	uKept    = func(r unpackRun) float64 { return float64(r.RootBytes) / scenario.MB }
)

// decompTools names the decompressors the runs used, "none" when gzip was
// decompressed in the daemon (or nothing was gzip).
func decompTools(runs []unpackRun) string {
	var names []string
	for _, r := range runs {
		for _, d := range r.Decomp {
			if !slices.Contains(names, d.Tool) {
				names = append(names, d.Tool)
			}
		}
	}
	if len(names) == 0 {
		return "none"
	}
	slices.Sort(names)
	return strings.Join(names, "+")
}

// kept is the median MB under the daemon's --root after the build, "–"
// where the host does not see it (the rootless image keeps it in a
// volume).
func kept(runs []unpackRun) string {
	for _, r := range runs {
		if r.RootBytes == 0 {
			return "–"
		}
	}
	return fmt.Sprintf("%.0f", sampleOf(runs, uKept).Median())
}

func (b *unpackBench) median(c, col string, f func(unpackRun) float64) float64 {
	return sampleOf(b.cells[c][col], f).Median()
}

// caseTable is one row of the benchmark as a table: a line per column.
func (b *unpackBench) caseTable(c unpackCase) mdtable.Table {
	n := cores()
	tb := mdtable.Table{Header: []string{"build 2", "wall s (min–max)", "layers extracted", "extracting: busy / Σ / largest s", "not extracting s: all (before first, after last)",
		"CPU s: daemon (in kernel) + children (decompressor: s, runs)", fmt.Sprintf("CPU / %d cores s", n), "MB written (kept under --root)", "bound s", "/ baseline eager", "/ upstream eager"}}
	base := b.median(c.Name, "baseline/eager", uBuild)
	up := b.median(c.Name, "upstream/eager", uBuild)
	for _, col := range unpackColumns(c, b.opts.Daemons) {
		runs := b.cells[c.Name][col.key()]
		errs := b.errs[c.Name][col.key()]
		row := []string{col.title(c.Cache != "")}
		if len(runs) == 0 {
			status := "not run"
			if len(errs) > 0 {
				status = fmt.Sprintf("FAILED %d/%d", len(errs), len(errs))
			}
			tb.AddRow(append(row, status)...)
			continue
		}
		w := sampleOf(runs, uBuild)
		wall := fmt.Sprintf("**%s** (%s–%s)", fmtSecs(w.Median()), fmtSecs(w.Min()), fmtSecs(w.Max()))
		if len(errs) > 0 {
			wall += fmt.Sprintf(", %d FAILED", len(errs))
		}
		m := func(f func(unpackRun) float64) float64 { return sampleOf(runs, f).Median() }
		row = append(row, wall,
			fmt.Sprintf("%.0f", m(uLayers)),
			fmt.Sprintf("%s / %s / %s", fmtSecs(m(uBusy)), fmtSecs(m(uSum)), fmtSecs(m(uLargest))),
			fmt.Sprintf("%s (%s, %s)", fmtSecs(m(uRest)), fmtSecs(m(uBefore)), fmtSecs(m(uAfter))),
			fmt.Sprintf("%s (%s) + %s (%s: %s, %.0f)", fmtSecs(m(uDaemon)), fmtSecs(m(uSys)), fmtSecs(m(uChild)), decompTools(runs), fmtSecs(m(uDecomp)), m(uDecRuns)),
			fmtSecs(m(uCPU)/float64(n)),
			fmt.Sprintf("%.0f (%s)", m(uWritten), kept(runs)),
			fmtSecs(m(uBound(n))),
			fmtRatio(stats.Ratio(w.Median(), base)),
			fmtRatio(stats.Ratio(w.Median(), up)),
		)
		tb.AddRow(row...)
	}
	return tb
}

// layerTable shows each layer's extraction time, median over the runs of
// each column, the layers in the order the first column's first run
// extracted them.
func (b *unpackBench) layerTable(c unpackCase) (mdtable.Table, bool) {
	cols := unpackColumns(c, b.opts.Daemons)
	tb := mdtable.Table{Header: []string{"layer", "MB compressed", "holds"}}
	var order []string
	seen := map[string]bool{}
	per := map[string]map[string]stats.Sample{} // col -> digest -> seconds
	for _, col := range cols {
		tb.Header = append(tb.Header, col.title(c.Cache != "")+" s")
		per[col.key()] = map[string]stats.Sample{}
		for _, r := range b.cells[c.Name][col.key()] {
			for _, l := range r.Extracted.Layers {
				per[col.key()][l.Digest] = append(per[col.key()][l.Digest], l.Duration().Seconds())
				if !seen[l.Digest] {
					seen[l.Digest] = true
					order = append(order, l.Digest)
				}
			}
		}
	}
	for _, d := range order {
		row := []string{shortDigest(d), b.blobMB(d), b.layers.describe(d)}
		for _, col := range cols {
			if s := per[col.key()][d]; len(s) > 0 {
				row = append(row, fmtSecs(s.Median()))
			} else {
				row = append(row, "–")
			}
		}
		tb.AddRow(row...)
	}
	return tb, len(order) > 0
}

func shortDigest(d string) string {
	d = strings.TrimPrefix(d, "sha256:")
	if len(d) > 12 {
		d = d[:12]
	}
	return d
}

// blobMB finds a layer's compressed size in the registry's storage or a
// pristine cache directory.
func (b *unpackBench) blobMB(dgst string) string {
	hex := strings.TrimPrefix(dgst, "sha256:")
	if len(hex) < 2 {
		return "?"
	}
	cands := []string{filepath.Join(b.s.Dir, "registry", "data", "docker", "registry", "v2", "blobs", "sha256", hex[:2], hex, "data")}
	ents, _ := os.ReadDir(b.dir)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "cache-") {
			cands = append(cands, filepath.Join(b.dir, e.Name(), "blobs", "sha256", hex))
		}
	}
	for _, p := range cands {
		if fi, err := os.Stat(p); err == nil {
			return fmt.Sprintf("%.1f", float64(fi.Size())/scenario.MB)
		}
	}
	return "?"
}

// target is the verdict, when the report's rootful row ran.
func (b *unpackBench) target() (string, bool) {
	ok := false
	for _, c := range b.opts.Cases {
		ok = ok || c.Name == "report"
	}
	if !ok {
		return "", false
	}
	lazy := b.median("report", "ours/lazy", uBuild)
	eager := b.median("report", "baseline/eager", uBuild)
	v := stats.Ratio(lazy, eager)
	seqBound := stats.Ratio(b.median("report", "baseline/lazy", uBound(cores())), eager)
	verdict := "not measured"
	switch {
	case math.IsNaN(v):
	case v <= unpackTarget:
		verdict = "met"
	default:
		verdict = "MISSED"
	}
	return fmt.Sprintf("%s: report's Dockerfile build 2, rootful: ours lazy / baseline eager = %s (%s s / %s s), target ≤ %.2f; "+
		"the bound from the baseline's lazy runs (layers applied one at a time): %s",
		verdict, fmtRatio(v), fmtSecs(lazy), fmtSecs(eager), unpackTarget, fmtRatio(seqBound)), true
}

func (b *unpackBench) header() string {
	var sb strings.Builder
	m := scenario.DescribeMachine(b.s.Tools)
	fmt.Fprintf(&sb, "`%s`, started %s, %d runs per cell, interleaved (the column order rotates from run to run), a fresh buildkitd per build.\n",
		strings.TrimSpace("cd hack/bench && go run ./cmd/bench "+strings.Join(b.opts.Args, " ")), b.started.UTC().Format("2006-01-02 15:04 MST"), b.opts.Runs)
	end := b.load[1]
	if end == "" {
		end = "(still running)"
	}
	fmt.Fprintf(&sb, "%d cores (%s), kernel %s; load average %s at start, %s at end. gzip layers decompressed with %s (-gunzip).\n",
		m.Cores, m.CPU, m.Kernel, b.load[0], end, b.opts.Gunzip)
	fmt.Fprintf(&sb, "Base image %s: %d layers, %d MB compressed, %d MB uncompressed.\n", b.base.Ref, b.base.Layers, b.base.Compressed/scenario.MB, b.base.Uncompressed/scenario.MB)
	fmt.Fprintf(&sb, "Daemons:\n")
	for _, d := range b.opts.Daemons {
		fmt.Fprintf(&sb, "- %s: %s (%s)\n", d.Name, d.Version, d.Dir)
	}
	return sb.String()
}

func (b *unpackBench) text() string {
	var sb strings.Builder
	sb.WriteString(b.header())
	for _, c := range b.opts.Cases {
		fmt.Fprintf(&sb, "\n%s\n", c.Title)
		sb.WriteString(b.caseTable(c).Text())
		if tb, ok := b.layerTable(c); ok {
			fmt.Fprintf(&sb, "\nper layer (median s):\n")
			sb.WriteString(tb.Text())
		}
	}
	if t, ok := b.target(); ok {
		fmt.Fprintf(&sb, "\n%s\n", t)
	}
	return sb.String()
}

func (b *unpackBench) markdown() string {
	var sb strings.Builder
	sb.WriteString("# Extracting a layer chain: build 2 on three daemons\n\n")
	sb.WriteString(b.header())
	sb.WriteString("\n" + unpackLegend + "\n")
	for _, c := range b.opts.Cases {
		fmt.Fprintf(&sb, "\n## %s\n\n", c.Title)
		sb.WriteString(b.caseTable(c).Markdown())
		if tb, ok := b.layerTable(c); ok {
			sb.WriteString("\nEach layer's extraction, median s:\n\n")
			sb.WriteString(tb.Markdown())
		}
		var failed []string
		for col, errs := range b.errs[c.Name] {
			for _, e := range errs {
				failed = append(failed, fmt.Sprintf("- %s: %s", col, firstLine(e)))
			}
		}
		if len(failed) > 0 {
			fmt.Fprintf(&sb, "\nFailed runs:\n\n%s\n", strings.Join(failed, "\n"))
		}
	}
	if t, ok := b.target(); ok {
		fmt.Fprintf(&sb, "\n**Target**: %s\n", t)
	}
	return sb.String()
}

const unpackLegend = `Columns: build 2's wall time (buildctl build alone, median and range); the layers it extracted
and, from the daemon's own "extracting sha256:…" status (snapshot prepared, blob applied, diffID
checked, committed), the time at least one layer was extracting (busy), the layers' times added
up (Σ) and the longest; the build's time outside extraction, and of it the time before the first
layer started and after the last one ended (cache import, fetches, then the steps that run and the
cache export); CPU seconds of buildkitd itself
(/proc/PID/stat, in-process gzip and zstd included; in brackets the part spent in the kernel)
and of the children it waited for, of which
the gzip decompressors' (a shim on its PATH times each run); that CPU over the cores; bytes
buildkitd and its children sent to the storage layer (/proc/PID/io write_bytes), and what stays
under its --root after the build (apparent size, like du -sb; rootful only); the bound: the
time outside extraction plus max(longest layer, Σ / cores), the least build 2 can take with its
layers applied side by side if each took as long as here; ratios of medians to the baseline's and
upstream's eager build 2 in the same run.`

func (b *unpackBench) write() error {
	if err := os.MkdirAll(filepath.Dir(b.opts.MD), 0o755); err != nil {
		return errors.WithStack(err)
	}
	return errors.Wrapf(os.WriteFile(b.opts.MD, []byte(b.markdown()), 0o644), "failed to write %s", b.opts.MD)
}
