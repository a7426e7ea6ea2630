package main

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/lazylocal/buildkit/hack/bench/chart"
	"github.com/lazylocal/buildkit/hack/bench/mdtable"
	"github.com/lazylocal/buildkit/hack/bench/scenario"
	"github.com/lazylocal/buildkit/hack/bench/stats"
	"github.com/pkg/errors"
)

type report struct {
	Opts      options
	Started   time.Time
	Wall      time.Duration
	Machine   scenario.Machine
	Mode      string
	LoadStart string
	LoadEnd   string
	// BaselineVersion is what the baseline buildkitd, if any, says with
	// --version.
	BaselineVersion string
	Sizes           []*sizeResult
}

func (c *cell) sample(f func(scenario.Result) float64) stats.Sample {
	if c == nil {
		return nil
	}
	s := make(stats.Sample, len(c.Runs))
	for i, r := range c.Runs {
		s[i] = f(r)
	}
	return s
}

func buildSecs(r scenario.Result) float64 { return r.Build.Seconds() }
func totalSecs(r scenario.Result) float64 { return r.Total.Seconds() }
func extracting(r scenario.Result) float64 {
	return float64(r.Extract.Lines)
}
func rootMB(r scenario.Result) float64   { return float64(r.RootBytes) / scenario.MB }
func rssMB(r scenario.Result) float64    { return float64(r.PeakRSS) / scenario.MB }
func hashSecs(r scenario.Result) float64 { return r.HashFloor.Seconds() }
func hashMB(r scenario.Result) float64   { return float64(r.HashBytes) / scenario.MB }

// hashFloor is the median time to sha256 what the lazy builds of row
// exported to a new directory, "" for rows that export nowhere new.
func (r *sizeResult) hashFloor(row scenario.Case) string {
	if !row.NewDir {
		return ""
	}
	c := r.get(row.Name, "lazy")
	if c == nil || len(c.Runs) == 0 {
		return "n/a"
	}
	t := c.sample(hashSecs)
	return fmt.Sprintf("%s s (%s–%s) for %.0f MB", fmtSecs(t.Median()), fmtSecs(t.Min()), fmtSecs(t.Max()), c.sample(hashMB).Median())
}

func (r *sizeResult) get(row, col string) *cell {
	if r.Cells[row] == nil {
		return nil
	}
	return r.Cells[row][col]
}

// median build-2 time of a cell, NaN if it has no runs
func (r *sizeResult) median(row, col string) float64 {
	return r.get(row, col).sample(buildSecs).Median()
}

func (r *sizeResult) label() string {
	return fmt.Sprintf("~%d MB", r.TargetMB)
}

func fmtSecs(v float64) string {
	switch {
	case math.IsNaN(v):
		return "n/a"
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.2f", v)
	}
}

func fmtRatio(v float64) string {
	if math.IsNaN(v) {
		return "n/a"
	}
	if v < 0.1 {
		return fmt.Sprintf("%.3f", v)
	}
	return fmt.Sprintf("%.2f", v)
}

func cellText(c *cell) string {
	if c == nil || (len(c.Runs) == 0 && len(c.Errs) == 0) {
		return "not run"
	}
	if len(c.Runs) == 0 {
		return fmt.Sprintf("FAILED %d/%d", len(c.Errs), len(c.Errs))
	}
	t := c.sample(buildSecs)
	s := fmt.Sprintf("**%s s** (%s–%s)\n%.0f extracting · %.0f MB disk · %.0f MB RSS",
		fmtSecs(t.Median()), fmtSecs(t.Min()), fmtSecs(t.Max()),
		c.sample(extracting).Median(), c.sample(rootMB).Median(), c.sample(rssMB).Median())
	if len(c.Errs) > 0 {
		s += fmt.Sprintf("\n%d run(s) FAILED", len(c.Errs))
	}
	return s
}

func (rep *report) sizeTable(r *sizeResult) mdtable.Table {
	tb := mdtable.Table{Header: []string{"scenario"}}
	for _, c := range columns {
		tb.Header = append(tb.Header, c.Title)
	}
	tb.Header = append(tb.Header, "lazy/eager", "lazy/registry", "lazy/floor", "sha256 of DIR-new")
	for _, row := range rep.Opts.Rows {
		cells := []string{row.Title}
		for _, c := range columns {
			cells = append(cells, cellText(r.get(row.Name, c.Name)))
		}
		lazy := r.median(row.Name, "lazy")
		cells = append(cells,
			fmtRatio(stats.Ratio(lazy, r.median(row.Name, "eager"))),
			fmtRatio(stats.Ratio(lazy, r.median(row.Name, "registry"))),
			fmtRatio(stats.Ratio(lazy, r.median(row.Name, "warm"))),
			r.hashFloor(row))
		tb.AddRow(cells...)
	}
	return tb
}

// totalsTable shows what a CI job waits for: the daemonless wrapper's whole
// run, starting and stopping buildkitd included.
func (rep *report) totalsTable() mdtable.Table {
	tb := mdtable.Table{Header: []string{"size", "scenario"}}
	for _, c := range columns[:3] {
		tb.Header = append(tb.Header, c.Title)
	}
	tb.Header = append(tb.Header, "lazy/eager")
	for _, r := range rep.Sizes {
		for _, row := range rep.Opts.Rows {
			cells := []string{r.label(), row.Title}
			for _, c := range columns[:3] {
				cells = append(cells, fmtSecs(r.get(row.Name, c.Name).sample(totalSecs).Median())+" s")
			}
			cells = append(cells, fmtRatio(stats.Ratio(
				r.get(row.Name, "lazy").sample(totalSecs).Median(),
				r.get(row.Name, "eager").sample(totalSecs).Median())))
			tb.AddRow(cells...)
		}
	}
	return tb
}

// target is one of the goals with what this run measured.
type target struct {
	Goal     string
	Measured string
	Verdict  string
}

func verdict(ok, measured bool) string {
	switch {
	case !measured:
		return "not measured in this run"
	case ok:
		return "met"
	default:
		return "MISSED"
	}
}

// nearest returns the size result whose target is closest to mb.
func (rep *report) nearest(mb int) *sizeResult {
	var best *sizeResult
	for _, r := range rep.Sizes {
		if best == nil || math.Abs(float64(r.TargetMB-mb)) < math.Abs(float64(best.TargetMB-mb)) {
			best = r
		}
	}
	return best
}

func (rep *report) hasRow(name string) bool {
	for _, r := range rep.Opts.Rows {
		if r.Name == name {
			return true
		}
	}
	return false
}

func (rep *report) targets() []target {
	var out []target
	for _, row := range []string{"cached", "link"} {
		if !rep.hasRow(row) {
			continue
		}
		c, _ := scenario.CaseByName(row)

		// lazy/eager <= 0.05 at ~350 MB
		t := target{Goal: fmt.Sprintf("%s: lazy/eager ≤ 0.05 at ~350 MB", c.Title)}
		r := rep.nearest(350)
		measured := r != nil && r.TargetMB >= 200 && r.TargetMB <= 500
		if measured {
			v := stats.Ratio(r.median(row, "lazy"), r.median(row, "eager"))
			t.Measured = fmt.Sprintf("%s at %s", fmtRatio(v), r.label())
			t.Verdict = verdict(v <= 0.05, !math.IsNaN(v))
		} else {
			t.Verdict = verdict(false, false)
		}
		out = append(out, t)

		// lazy within 1.5x of registry at every size
		t = target{Goal: fmt.Sprintf("%s: lazy within 1.5x of the registry column", c.Title)}
		ok, seen := true, false
		var parts []string
		for _, r := range rep.Sizes {
			v := stats.Ratio(r.median(row, "lazy"), r.median(row, "registry"))
			if math.IsNaN(v) {
				continue
			}
			seen = true
			ok = ok && v <= 1.5
			parts = append(parts, fmt.Sprintf("%s at %s", fmtRatio(v), r.label()))
		}
		t.Measured = "lazy/registry " + strings.Join(parts, ", ")
		t.Verdict = verdict(ok, seen)
		out = append(out, t)

		// lazy flat within 20% from ~50 MB to ~1.2 GB
		t = target{Goal: fmt.Sprintf("%s: lazy build 2 flat (max/min ≤ 1.2) from ~50 MB to ~1.2 GB", c.Title)}
		var lo, hi = math.Inf(1), math.Inf(-1)
		parts = nil
		minMB, maxMB := math.MaxInt, 0
		for _, r := range rep.Sizes {
			v := r.median(row, "lazy")
			if math.IsNaN(v) {
				continue
			}
			lo, hi = min(lo, v), max(hi, v)
			minMB, maxMB = min(minMB, r.TargetMB), max(maxMB, r.TargetMB)
			parts = append(parts, fmt.Sprintf("%s s at %s", fmtSecs(v), r.label()))
		}
		measured = minMB <= 100 && maxMB >= 1000
		t.Measured = strings.Join(parts, ", ")
		if len(parts) > 1 {
			t.Measured += fmt.Sprintf("; max/min %.2f", hi/lo)
		}
		t.Verdict = verdict(hi/lo <= 1.2, measured)
		out = append(out, t)
	}
	if rep.hasRow("report") {
		t := target{Goal: "report's Dockerfile: lazy never slower than eager beyond noise (lazy's fastest run ≤ eager's slowest)"}
		ok, seen := true, false
		var parts []string
		for _, r := range rep.Sizes {
			l, e := r.get("report", "lazy").sample(buildSecs), r.get("report", "eager").sample(buildSecs)
			if len(l) == 0 || len(e) == 0 {
				continue
			}
			seen = true
			ok = ok && l.Min() <= e.Max()
			parts = append(parts, fmt.Sprintf("%s: lazy %s–%s s vs eager %s–%s s",
				r.label(), fmtSecs(l.Min()), fmtSecs(l.Max()), fmtSecs(e.Min()), fmtSecs(e.Max())))
		}
		t.Measured = strings.Join(parts, "; ")
		t.Verdict = verdict(ok, seen)
		out = append(out, t)
	}
	return out
}

func (rep *report) markdown() string {
	var b strings.Builder
	m := rep.Machine
	fmt.Fprintf(&b, "# Benchmarks: build 2 of the daemonless rebuild\n\n")
	cmdline := strings.TrimSpace("cd hack/bench && go run ./cmd/bench " + strings.Join(rep.Opts.Args, " "))
	fmt.Fprintf(&b, "Written by `make bench` (`%s`), started %s, wall time %s.\n",
		cmdline, rep.Started.UTC().Format("2006-01-02 15:04 MST"), rep.Wall.Round(time.Second))
	fmt.Fprintf(&b, "Every figure below comes from that one run; rerun the command to reproduce them.\n")
	if len(rep.Sizes) < len(rep.Opts.Sizes) {
		var done []string
		for _, r := range rep.Sizes {
			done = append(done, r.label())
		}
		fmt.Fprintf(&b, "**Partial: written after %s of the %d sizes asked for.**\n", strings.Join(done, ", "), len(rep.Opts.Sizes))
	}
	b.WriteString("\n")
	fmt.Fprintf(&b, "![build 2 wall time per scenario and base image size](%s)\n\n", filepath.Base(rep.Opts.PNG))

	fmt.Fprintf(&b, "## Machine\n\n")
	fmt.Fprintf(&b, "- %d cores (%s), %.0f GiB memory, kernel %s\n", m.Cores, m.CPU, m.MemoryGiB, m.Kernel)
	fmt.Fprintf(&b, "- %s, snapshotter `%s`, garbage collection off\n", m.Buildkitd, m.Snapshotter)
	fmt.Fprintf(&b, "- daemonless builds through %s\n", rep.Mode)
	fmt.Fprintf(&b, "- load average at start %s, at end %s. The machine is shared with other work (buildkitd\n", rep.LoadStart, rep.LoadEnd)
	fmt.Fprintf(&b, "  integration tests) that may run at the same time, so absolute seconds drift; compare the ratios,\n")
	fmt.Fprintf(&b, "  which come from the same run with the columns interleaved (their order rotates from run to run).\n\n")

	fmt.Fprintf(&b, "## What is measured\n\n")
	fmt.Fprintf(&b, "Build 2 of the scenario of moby/buildkit#6572: a Dockerfile `FROM` a generated base image\n")
	fmt.Fprintf(&b, "(files of at least 4 KB from this machine's /usr, real compressibility, pushed to a loopback registry), two `RUN`\n")
	fmt.Fprintf(&b, "steps, then `COPY . ./` (or `COPY --link . ./`). Build 1 exported the cache with `mode=max`;\n")
	fmt.Fprintf(&b, "build 2 imports it. Each cold build 2 starts from a copy of build 1's local cache directory\n")
	fmt.Fprintf(&b, "(the report's `--export-cache type=local,dest=DIR,mode=max --import-cache type=local,src=DIR`).\n\n")
	fmt.Fprintf(&b, "Scenarios (rows):\n\n")
	fmt.Fprintf(&b, "- report's Dockerfile: a source file changes, so the last `COPY . ./` re-runs and mounts its parent.\n")
	fmt.Fprintf(&b, "- `COPY --link`: the same change, but the copy does not need its parent.\n")
	fmt.Fprintf(&b, "- all steps cached: nothing changes.\n")
	fmt.Fprintf(&b, "- all cached + `--output type=oci,dest=FILE`: the image is exported as an OCI tarball.\n")
	fmt.Fprintf(&b, "- all cached, cache exported to a new directory: nothing changes, but the cache is exported to\n")
	fmt.Fprintf(&b, "  `DIR-new` (`--export-cache type=local,dest=DIR-new,mode=max`), as a CI job that rotates its cache\n")
	fmt.Fprintf(&b, "  directory does; every blob is read from `DIR` and written there. The registry column exports to a\n")
	fmt.Fprintf(&b, "  repository of its own. Beside it, \"sha256 of DIR-new\": the time to sha256 every file that landed in\n")
	fmt.Fprintf(&b, "  `DIR-new` (lazy runs, read back right after the build, same machine, same run), a floor for any export.\n")
	fmt.Fprintf(&b, "- all cached, cache exported with reset=true: nothing changes; the cache is exported into `DIR` with\n")
	fmt.Fprintf(&b, "  `reset=true`, which deletes the blobs the export does not use (the registry column: as for all cached).\n\n")
	fmt.Fprintf(&b, "Ways of running build 2 (columns):\n\n")
	fmt.Fprintf(&b, "- eager local import: fresh buildkitd (`buildctl-daemonless.sh`), `--import-cache type=local,src=DIR`.\n")
	fmt.Fprintf(&b, "- lazy local import: the same with `lazy=true`.\n")
	fmt.Fprintf(&b, "- registry cache import: fresh buildkitd, `--import-cache`/`--export-cache type=registry` to the\n")
	fmt.Fprintf(&b, "  loopback registry (upstream's importer, already lazy).\n")
	fmt.Fprintf(&b, "- warm daemon (floor): the same build on a buildkitd that made build 1 and was never restarted\n")
	fmt.Fprintf(&b, "  (lazy local import flags).\n")
	if rep.Opts.Baseline != "" {
		fmt.Fprintf(&b, "- lazy, baseline buildkitd: the lazy local import with another buildkitd, `%s`\n", rep.Opts.Baseline)
		fmt.Fprintf(&b, "  (%s), same client, interleaved with the other columns: before/after in one run.\n", rep.BaselineVersion)
	}
	b.WriteString("\n")
	fmt.Fprintf(&b, "Each cell: **median** build 2 wall time of %d runs (min–max), where the time is `buildctl build`\n", rep.Opts.Runs)
	fmt.Fprintf(&b, "alone, timed inside the wrapper; then the median of: `extracting sha256:` lines in\n")
	fmt.Fprintf(&b, "`--progress=plain` output; MB under the daemon's `--root` (apparent size, like `du -sb`, after the\n")
	fmt.Fprintf(&b, "build; it starts empty; for the warm daemon, its growth during the build); buildkitd's peak RSS\n")
	fmt.Fprintf(&b, "(VmHWM from /proc/PID/status, sampled every 50 ms until the daemon exits; reset before each build\n")
	fmt.Fprintf(&b, "for the warm daemon). Ratios are of medians. MB = 10^6 bytes.\n\n")

	for _, r := range rep.Sizes {
		fmt.Fprintf(&b, "## Base image %s: %d layers, %d MB compressed, %d MB uncompressed\n\n",
			r.label(), r.Base.Layers, r.Base.Compressed/scenario.MB, r.Base.Uncompressed/scenario.MB)
		b.WriteString(rep.sizeTable(r).Markdown())
		b.WriteString("\n")
	}

	fmt.Fprintf(&b, "## Whole daemonless invocation\n\n")
	fmt.Fprintf(&b, "Median wall time of `buildctl-daemonless.sh` itself: starting buildkitd, waiting for it, the build,\n")
	fmt.Fprintf(&b, "stopping it. This is what a CI job waits for.\n\n")
	b.WriteString(rep.totalsTable().Markdown())
	b.WriteString("\n")

	fmt.Fprintf(&b, "## Targets\n\n")
	tb := mdtable.Table{Header: []string{"goal", "measured", "verdict"}}
	for _, t := range rep.targets() {
		tb.AddRow(t.Goal, t.Measured, t.Verdict)
	}
	b.WriteString(tb.Markdown())

	var failed []string
	for _, r := range rep.Sizes {
		for _, row := range rep.Opts.Rows {
			for _, c := range columns {
				if cl := r.get(row.Name, c.Name); cl != nil {
					for _, e := range cl.Errs {
						failed = append(failed, fmt.Sprintf("- %s, %s, %s: %s", r.label(), row.Name, c.Name, firstLine(e)))
					}
				}
			}
		}
	}
	if len(failed) > 0 {
		fmt.Fprintf(&b, "\n## Failed runs\n\n%s\n", strings.Join(failed, "\n"))
	}
	return b.String()
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	if len(s) > 300 {
		s = s[:300] + "…"
	}
	return s
}

func (rep *report) chart() error {
	var panels []chart.Panel
	groups := make([]string, len(rep.Opts.Rows))
	short := map[string]string{"report": "report's", "link": "COPY --link", "cached": "all cached", "oci": "cached + oci", "newdir": "cached, new dir", "reset": "cached, reset"}
	for i, row := range rep.Opts.Rows {
		groups[i] = short[row.Name]
	}
	series := make([]string, len(columns))
	for i, c := range columns {
		series[i] = c.Title
	}
	for _, r := range rep.Sizes {
		p := chart.Panel{
			Title:  fmt.Sprintf("%s base (%d MB compressed)", r.label(), r.Base.Compressed/scenario.MB),
			Groups: groups,
		}
		for _, c := range columns {
			var bars []chart.Bar
			for _, row := range rep.Opts.Rows {
				s := r.get(row.Name, c.Name).sample(buildSecs)
				bars = append(bars, chart.Bar{Median: s.Median(), Min: s.Min(), Max: s.Max()})
			}
			p.Bars = append(p.Bars, bars)
		}
		panels = append(panels, p)
	}
	title := fmt.Sprintf("Build 2 wall time, fresh buildkitd per build (median of %d, whiskers min-max, log scale); %d cores, %s",
		rep.Opts.Runs, rep.Machine.Cores, rep.Started.UTC().Format("2006-01-02"))
	return chart.Render(rep.Opts.PNG, title, series, panels)
}

// keepMarker ends the generated part of the report: what follows it in the
// file (analysis written by hand, such as profiles) is kept when the report
// is written again.
const keepMarker = "<!-- end of make bench output; what follows is kept when make bench rewrites this file -->\n"

// keptTail returns the marker and what follows it in the file at path, or
// the marker alone.
func keptTail(path string) string {
	old, err := os.ReadFile(path)
	if err != nil {
		return keepMarker
	}
	if _, tail, ok := strings.Cut(string(old), keepMarker); ok {
		return keepMarker + tail
	}
	return keepMarker
}

func (rep *report) write() error {
	md := rep.markdown() + "\n" + keptTail(rep.Opts.MD)
	if err := os.WriteFile(rep.Opts.MD, []byte(md), 0o644); err != nil {
		return errors.Wrapf(err, "failed to write %s", rep.Opts.MD)
	}
	return rep.chart()
}

// summary is what the terminal shows at the end: medians and ratios.
func (rep *report) summary() string {
	tb := mdtable.Table{Header: []string{"size", "scenario", "eager s", "lazy s", "registry s", "warm s", "lazy/eager", "lazy/registry", "lazy/floor", "extracting e/l", "sha256 of DIR-new"}}
	for _, r := range rep.Sizes {
		for _, row := range rep.Opts.Rows {
			l := r.median(row.Name, "lazy")
			tb.AddRow(r.label(), row.Name,
				fmtSecs(r.median(row.Name, "eager")), fmtSecs(l), fmtSecs(r.median(row.Name, "registry")), fmtSecs(r.median(row.Name, "warm")),
				fmtRatio(stats.Ratio(l, r.median(row.Name, "eager"))),
				fmtRatio(stats.Ratio(l, r.median(row.Name, "registry"))),
				fmtRatio(stats.Ratio(l, r.median(row.Name, "warm"))),
				fmt.Sprintf("%.0f/%.0f", r.get(row.Name, "eager").sample(extracting).Median(), r.get(row.Name, "lazy").sample(extracting).Median()),
				r.hashFloor(row))
		}
	}
	var b strings.Builder
	b.WriteString(tb.Text())
	b.WriteString("\n")
	for _, t := range rep.targets() {
		fmt.Fprintf(&b, "%-9s %s: %s\n", t.Verdict, t.Goal, t.Measured)
	}
	fmt.Fprintf(&b, "\nwall time %s\n", rep.Wall.Round(time.Second))
	return b.String()
}
