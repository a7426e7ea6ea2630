package main

import (
	"strings"
	"testing"
	"time"

	"github.com/lazylocal/buildkit/hack/bench/scenario"
	"github.com/stretchr/testify/require"
)

func TestParseUnpackCases(t *testing.T) {
	cs, err := parseUnpackCases(defaultUnpackCases)
	require.NoError(t, err)
	var names []string
	for _, c := range cs {
		names = append(names, c.Name)
	}
	require.Equal(t, []string{"report", "cold", "zstd"}, names)
	cs, err = parseUnpackCases("rootless, report,rootless")
	require.NoError(t, err)
	require.Len(t, cs, 2)
	_, err = parseUnpackCases("report,link")
	require.EqualError(t, err, `-unpack "report,link": unknown row "link" (want some of report, rootless, cold, zstd)`)
	_, err = parseRows("report,unpack")
	require.EqualError(t, err, "-row unpack runs alone: it prints its own table")
}

var testDaemons = []*daemon{{Name: "ours", HasLazy: true}, {Name: "baseline", HasLazy: true}, {Name: "upstream"}}

func TestUnpackColumns(t *testing.T) {
	keys := func(c unpackCase) []string {
		var out []string
		for _, col := range unpackColumns(c, testDaemons) {
			out = append(out, col.key())
		}
		return out
	}
	require.Equal(t, []string{"ours/eager", "ours/lazy", "baseline/eager", "baseline/lazy", "upstream/eager"}, keys(unpackCases[0]))
	cold := unpackCases[2]
	require.Equal(t, "cold", cold.Name)
	require.Equal(t, []string{"ours/eager", "baseline/eager", "upstream/eager"}, keys(cold))
	require.Equal(t, "type=local,dest=D,mode=max", unpackCases[0].exportCache("D"))
	require.Equal(t, "type=local,dest=D,mode=max,compression=zstd,force-compression=true", unpackCases[3].exportCache("D"))
}

// layers lays out extractions at [start, end) seconds.
func layers(spans ...[2]float64) scenario.Extracted {
	var e scenario.Extracted
	for i, s := range spans {
		at := func(v float64) time.Time { return time.Unix(100, 0).Add(time.Duration(v * float64(time.Second))) }
		e.Layers = append(e.Layers, scenario.LayerTime{Digest: "sha256:" + strings.Repeat(string(rune('a'+i)), 64), Start: at(s[0]), End: at(s[1])})
	}
	return e
}

func dur(v float64) time.Duration { return time.Duration(v * float64(time.Second)) }

// The issue's own figures: layers of 6.3, 4.1, 0.9 and 2.2 s one after
// another (13.5 s), 2.9 s of the build not extracting: on 2 cores no
// schedule beats 2.9 + max(6.3, 13.5/2) = 9.65 s.
func TestUnpackBound(t *testing.T) {
	r := unpackRun{Result: scenario.Result{Build: dur(16.4)}, Extracted: layers([2]float64{1, 7.3}, [2]float64{7.3, 11.4}, [2]float64{11.4, 12.3}, [2]float64{12.3, 14.5})}
	require.InDelta(t, 2.9, r.rest().Seconds(), 1e-6)
	require.InDelta(t, 13.5, r.Extracted.Sum().Seconds(), 1e-6)
	require.InDelta(t, 9.65, r.bound(2).Seconds(), 1e-6)
	require.InDelta(t, 2.9+6.3, r.bound(4).Seconds(), 1e-6, "the largest layer bounds it on more cores")

	before, after := r.beforeAfter()
	require.Zero(t, before+after, "no build start known")
	r.BuildStart = time.Unix(100, 0)
	r.BuildEnd = r.BuildStart.Add(dur(16.4))
	before, after = r.beforeAfter()
	require.InDelta(t, 1, before.Seconds(), 1e-6)
	require.InDelta(t, 1.9, after.Seconds(), 1e-6)
}

func benchWith(report map[string][]float64) *unpackBench {
	b := &unpackBench{opts: unpackOpts{Daemons: testDaemons, Cases: []unpackCase{unpackCases[0]}}, cells: map[string]map[string][]unpackRun{"report": {}}}
	for col, walls := range report {
		for _, w := range walls {
			b.cells["report"][col] = append(b.cells["report"][col], unpackRun{Result: scenario.Result{Build: dur(w)}, Extracted: layers([2]float64{0, w / 2}, [2]float64{w / 2, w - 1})})
		}
	}
	return b
}

func TestUnpackTarget(t *testing.T) {
	b := benchWith(map[string][]float64{"ours/lazy": {10, 11, 30}, "baseline/eager": {16, 15, 17}, "baseline/lazy": {16}})
	got, ok := b.target()
	require.True(t, ok)
	require.True(t, strings.HasPrefix(got, "met: "), got)
	require.Contains(t, got, "= 0.69 (11.0 s / 16.0 s)")

	b = benchWith(map[string][]float64{"ours/lazy": {12}, "baseline/eager": {16}})
	got, _ = b.target()
	require.True(t, strings.HasPrefix(got, "MISSED: "), got)

	b = benchWith(map[string][]float64{"baseline/eager": {16}})
	got, _ = b.target()
	require.True(t, strings.HasPrefix(got, "not measured: "), got)

	b.opts.Cases = []unpackCase{unpackCases[2]}
	_, ok = b.target()
	require.False(t, ok, "no report row, no verdict")
}

func TestUnpackCaseTable(t *testing.T) {
	b := benchWith(map[string][]float64{"ours/lazy": {8}, "baseline/eager": {16}})
	b.errs = map[string]map[string][]string{"report": {"upstream/eager": {"boom"}}}
	tb := b.caseTable(unpackCases[0])
	require.Len(t, tb.Rows, 5)
	require.Equal(t, []string{"ours, eager", "not run"}, tb.Rows[0])
	require.Equal(t, "ours, lazy", tb.Rows[1][0])
	require.Equal(t, "**8.00** (8.00–8.00)", tb.Rows[1][1])
	require.Equal(t, "2", tb.Rows[1][2])
	require.Equal(t, "7.00 / 7.00 / 4.00", tb.Rows[1][3], "busy / Σ / largest")
	require.Equal(t, "0.50", tb.Rows[1][len(tb.Rows[1])-2], "/ baseline eager")
	require.Equal(t, "n/a", tb.Rows[1][len(tb.Rows[1])-1], "/ upstream eager: not run")
	require.Equal(t, "0.00 (0.00) + 0.00 (none: 0.00, 0)", tb.Rows[1][5])
	require.Equal(t, []string{"upstream, eager", "FAILED 1/1"}, tb.Rows[4])

	b.cells["report"]["ours/lazy"][0].Decomp = []scenario.DecompressorRun{{Tool: "unpigz", CPU: dur(0.5)}, {Tool: "igzip", CPU: dur(1)}}
	require.Equal(t, "0.00 (0.00) + 0.00 (igzip+unpigz: 1.50, 2)", b.caseTable(unpackCases[0]).Rows[1][5])
}
