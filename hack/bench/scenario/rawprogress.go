package scenario

import (
	"bufio"
	"encoding/json"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/pkg/errors"
)

// LayerTime is one layer the daemon extracted during a build: from the
// "extracting sha256:..." status BuildKit shows around preparing the
// snapshot, applying the blob, checking its diffID and committing it
// (cache/refs.go unlazyLayer), with the daemon's own timestamps.
type LayerTime struct {
	Digest     string
	Start, End time.Time
}

// Duration is how long the layer took.
func (l LayerTime) Duration() time.Duration { return l.End.Sub(l.Start) }

// Extracted is what buildctl --progress=rawjson says about the layers a
// build extracted.
type Extracted struct {
	// Layers in the order they started.
	Layers []LayerTime
}

// rawStatus is the part of BuildKit's client.SolveStatus (one JSON object a
// line in rawjson mode) that this package reads.
type rawStatus struct {
	Statuses []struct {
		ID        string     `json:"id"`
		Started   *time.Time `json:"started"`
		Completed *time.Time `json:"completed"`
	} `json:"statuses"`
}

const extractingPrefix = "extracting "

// ParseRawProgress reads buildctl --progress=rawjson output, which may be
// mixed with other lines (the wrapper's), and returns the extractions it
// reports. A status comes in several updates; a layer's start is its first
// Started, its end its last Completed. A layer that never completed (the
// build failed) is left out.
func ParseRawProgress(r io.Reader) (Extracted, error) {
	type span struct{ start, end time.Time }
	spans := map[string]*span{}
	s := bufio.NewScanner(r)
	s.Buffer(make([]byte, 64*1024), 16*1024*1024)
	for s.Scan() {
		line := s.Bytes()
		if len(line) == 0 || line[0] != '{' {
			continue
		}
		var st rawStatus
		if err := json.Unmarshal(line, &st); err != nil {
			return Extracted{}, errors.Wrapf(err, "malformed rawjson progress line %.200q", line)
		}
		for _, v := range st.Statuses {
			dgst, ok := strings.CutPrefix(v.ID, extractingPrefix)
			if !ok {
				continue
			}
			sp := spans[dgst]
			if sp == nil {
				sp = &span{}
				spans[dgst] = sp
			}
			if v.Started != nil && (sp.start.IsZero() || v.Started.Before(sp.start)) {
				sp.start = *v.Started
			}
			if v.Completed != nil && v.Completed.After(sp.end) {
				sp.end = *v.Completed
			}
		}
	}
	if err := s.Err(); err != nil {
		return Extracted{}, errors.Wrap(err, "failed to read build progress")
	}
	var e Extracted
	for d, sp := range spans {
		if sp.start.IsZero() || sp.end.IsZero() {
			continue
		}
		e.Layers = append(e.Layers, LayerTime{Digest: d, Start: sp.start, End: sp.end})
	}
	slices.SortFunc(e.Layers, func(a, b LayerTime) int {
		if c := a.Start.Compare(b.Start); c != 0 {
			return c
		}
		return strings.Compare(a.Digest, b.Digest)
	})
	return e, nil
}

// Sum is the layers' durations added up: the time a one-at-a-time apply
// needs.
func (e Extracted) Sum() time.Duration {
	var t time.Duration
	for _, l := range e.Layers {
		t += l.Duration()
	}
	return t
}

// Largest is the longest single layer: no schedule finishes the chain
// sooner.
func (e Extracted) Largest() time.Duration {
	var t time.Duration
	for _, l := range e.Layers {
		t = max(t, l.Duration())
	}
	return t
}

// Busy is the time at least one layer was being extracted (the union of
// the layers' intervals): Sum when they ran one after another, less when
// they overlapped.
func (e Extracted) Busy() time.Duration {
	var (
		total    time.Duration
		cur, end time.Time
	)
	for _, l := range e.Layers { // sorted by start
		switch {
		case end.IsZero():
			cur, end = l.Start, l.End
		case l.Start.After(end):
			total += end.Sub(cur)
			cur, end = l.Start, l.End
		case l.End.After(end):
			end = l.End
		}
	}
	if !end.IsZero() {
		total += end.Sub(cur)
	}
	return total
}
