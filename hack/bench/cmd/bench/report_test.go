package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lazylocal/buildkit/hack/bench/scenario"
	"github.com/stretchr/testify/require"
)

func runs(secs ...float64) *cell {
	c := &cell{}
	for _, s := range secs {
		c.Runs = append(c.Runs, scenario.Result{Build: time.Duration(s * float64(time.Second))})
	}
	return c
}

func synthetic(lazyCachedBig float64) *report {
	rows, _ := parseRows("report,link,cached")
	rep := &report{Opts: options{Rows: rows, Runs: 3}}
	for _, mb := range []int{50, 350, 1200} {
		eager := float64(mb) / 10
		r := &sizeResult{TargetMB: mb, Cells: map[string]map[string]*cell{}}
		lazyCached := 0.3
		if mb == 1200 {
			lazyCached = lazyCachedBig
		}
		for _, row := range []string{"link", "cached"} {
			r.Cells[row] = map[string]*cell{
				"eager":    runs(eager, eager+1, eager-1),
				"lazy":     runs(lazyCached, lazyCached, lazyCached),
				"registry": runs(0.25, 0.25, 0.3),
				"warm":     runs(0.2, 0.2, 0.2),
			}
		}
		r.Cells["report"] = map[string]*cell{
			"eager": runs(eager, eager+1, eager-1),
			"lazy":  runs(eager+0.5, eager+3, eager+0.2),
		}
		rep.Sizes = append(rep.Sizes, r)
	}
	return rep
}

func verdicts(rep *report) map[string]string {
	out := map[string]string{}
	for _, t := range rep.targets() {
		out[t.Goal] = t.Verdict
	}
	return out
}

func TestTargetsMet(t *testing.T) {
	v := verdicts(synthetic(0.32))
	require.Len(t, v, 7)
	for goal, verdict := range v {
		require.Equal(t, "met", verdict, goal)
	}
}

func TestTargetsMissed(t *testing.T) {
	v := verdicts(synthetic(0.9)) // lazy at 1.2 GB: 3x the 50 MB time, 3.6x registry
	require.Equal(t, "MISSED", v["all steps cached: lazy build 2 flat (max/min ≤ 1.2) from ~50 MB to ~1.2 GB"])
	require.Equal(t, "MISSED", v["all steps cached: lazy within 1.5x of the registry column"])
	require.Equal(t, "met", v["all steps cached: lazy/eager ≤ 0.05 at ~350 MB"])
}

func TestTargetsNotMeasured(t *testing.T) {
	rep := synthetic(0.3)
	rep.Sizes = rep.Sizes[:1] // only ~50 MB
	v := verdicts(rep)
	require.Equal(t, "not measured in this run", v["COPY --link . ./ changed: lazy/eager ≤ 0.05 at ~350 MB"])
	require.Equal(t, "not measured in this run", v["COPY --link . ./ changed: lazy build 2 flat (max/min ≤ 1.2) from ~50 MB to ~1.2 GB"])
}

func TestReportSlowerBeyondNoise(t *testing.T) {
	rep := synthetic(0.3)
	rep.Sizes[0].Cells["report"]["lazy"] = runs(9, 9.5, 10) // eager 4-6 s
	v := verdicts(rep)
	for goal, verdict := range v {
		if strings.HasPrefix(goal, "report's") {
			require.Equal(t, "MISSED", verdict)
		}
	}
}

func TestParseFlags(t *testing.T) {
	sizes, err := parseSizes("50, 350,1200")
	require.NoError(t, err)
	require.Equal(t, []int{50, 350, 1200}, sizes)
	_, err = parseSizes("50,big")
	require.ErrorContains(t, err, "-size")
	_, err = parseRows("cached,nope")
	require.ErrorContains(t, err, `unknown case "nope"`)
}

// What follows the marker in the existing report survives a rewrite.
func TestKeptTail(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "b.md")
	require.Equal(t, keepMarker, keptTail(p), "no file yet")
	require.NoError(t, os.WriteFile(p, []byte("# old figures\n"+keepMarker+"## Where the time goes\n"), 0o644))
	require.Equal(t, keepMarker+"## Where the time goes\n", keptTail(p))
	require.NoError(t, os.WriteFile(p, []byte("# no marker\n"), 0o644))
	require.Equal(t, keepMarker, keptTail(p))
}
