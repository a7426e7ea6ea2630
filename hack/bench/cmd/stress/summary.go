package main

import (
	"fmt"
	"time"

	"github.com/lazylocal/buildkit/hack/bench/mdtable"
)

// tally counts how the builds of one round, or of the whole run, ended.
type tally struct {
	builds      int
	kinds       map[Kind]int
	skipped     int // resets that found the directory in use
	resets      int // resets that succeeded
	rotated     int
	rotateFails int
	slowest     time.Duration
}

func count(jobs []*job) tally {
	t := tally{kinds: map[Kind]int{}}
	for _, j := range jobs {
		t.add(j)
	}
	return t
}

func (t *tally) add(j *job) {
	t.builds++
	t.kinds[j.kind]++
	t.slowest = max(t.slowest, j.took)
	if j.role == roleReset && j.kind == KindOK {
		t.resets++
		if j.skipped {
			t.skipped++
		}
	}
	switch j.rotation {
	case "":
	case "ok":
		t.rotated++
	default:
		t.rotateFails++
	}
}

// summary is one row per round and a total: builds, successes, every kind
// of failure that occurred (unexpected ones marked), resets that skipped
// their cleanup, rotations, and the slowest build.
func summary(rounds [][]*job) mdtable.Table {
	total := tally{kinds: map[Kind]int{}}
	rows := make([]tally, len(rounds))
	for i, jobs := range rounds {
		rows[i] = count(jobs)
		for _, j := range jobs {
			total.add(j)
		}
	}
	var kinds []Kind
	for _, k := range Kinds[1:] {
		if total.kinds[k] > 0 {
			kinds = append(kinds, k)
		}
	}
	header := []string{"round", "builds", "ok"}
	for _, k := range kinds {
		name := string(k)
		if !k.Expected() {
			name += " (BUG)"
		}
		header = append(header, name)
	}
	header = append(header, "resets ok / cleanup skipped", "rotations ok / failed", "slowest build")
	tb := mdtable.Table{Header: header}
	row := func(name string, t tally) {
		cells := []string{name, fmt.Sprint(t.builds), fmt.Sprint(t.kinds[KindOK])}
		for _, k := range kinds {
			cells = append(cells, fmt.Sprint(t.kinds[k]))
		}
		cells = append(cells,
			fmt.Sprintf("%d / %d", t.resets, t.skipped),
			fmt.Sprintf("%d / %d", t.rotated, t.rotateFails),
			fmt.Sprintf("%.1f s", t.slowest.Seconds()))
		tb.AddRow(cells...)
	}
	for i, t := range rows {
		row(fmt.Sprint(rounds[i][0].round), t)
	}
	row("total", total)
	return tb
}
