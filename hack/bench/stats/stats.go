// Package stats summarises repeated measurements the way the benchmark
// reports them: a median, the spread around it, and ratios of medians taken
// in the same run, because absolute seconds drift on a shared machine.
package stats

import (
	"math"
	"slices"
)

// Sample is a set of repeated measurements of one quantity.
type Sample []float64

// Median returns the middle value, the mean of the two middle values for an
// even count, or NaN for an empty sample.
func (s Sample) Median() float64 {
	if len(s) == 0 {
		return math.NaN()
	}
	v := slices.Clone(s)
	slices.Sort(v)
	n := len(v)
	if n%2 == 1 {
		return v[n/2]
	}
	return (v[n/2-1] + v[n/2]) / 2
}

// Min returns the smallest value, or NaN for an empty sample.
func (s Sample) Min() float64 {
	if len(s) == 0 {
		return math.NaN()
	}
	return slices.Min(s)
}

// Max returns the largest value, or NaN for an empty sample.
func (s Sample) Max() float64 {
	if len(s) == 0 {
		return math.NaN()
	}
	return slices.Max(s)
}

// Spread returns (max-min)/median: the whole range of the runs relative to
// their median, 0 for a single run, NaN when the median is 0 or undefined.
func (s Sample) Spread() float64 {
	m := s.Median()
	if math.IsNaN(m) || m == 0 {
		return math.NaN()
	}
	return (s.Max() - s.Min()) / m
}

// Ratio returns a/b, or NaN when either is undefined or b is 0.
func Ratio(a, b float64) float64 {
	if math.IsNaN(a) || math.IsNaN(b) || b == 0 {
		return math.NaN()
	}
	return a / b
}
