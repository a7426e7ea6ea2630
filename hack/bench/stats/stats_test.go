package stats

import (
	"math"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestSample(t *testing.T) {
	tests := []struct {
		name                  string
		in                    Sample
		median, min, max, spr float64
	}{
		{name: "odd", in: Sample{3, 1, 2}, median: 2, min: 1, max: 3, spr: 1},
		{name: "even", in: Sample{4, 1, 3, 2}, median: 2.5, min: 1, max: 4, spr: 1.2},
		{name: "single", in: Sample{5}, median: 5, min: 5, max: 5, spr: 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			require.InDelta(t, tt.median, tt.in.Median(), 1e-9)
			require.InDelta(t, tt.min, tt.in.Min(), 1e-9)
			require.InDelta(t, tt.max, tt.in.Max(), 1e-9)
			require.InDelta(t, tt.spr, tt.in.Spread(), 1e-9)
		})
	}
}

func TestSampleDoesNotReorder(t *testing.T) {
	s := Sample{3, 1, 2}
	s.Median()
	require.Equal(t, Sample{3, 1, 2}, s)
}

func TestUndefined(t *testing.T) {
	require.True(t, math.IsNaN(Sample{}.Median()))
	require.True(t, math.IsNaN(Sample{}.Spread()))
	require.True(t, math.IsNaN(Sample{0, 0}.Spread()))
	require.True(t, math.IsNaN(Ratio(1, 0)))
	require.True(t, math.IsNaN(Ratio(math.NaN(), 1)))
	require.InDelta(t, 0.5, Ratio(1, 2), 1e-9)
}
