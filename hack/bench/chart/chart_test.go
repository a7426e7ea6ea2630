package chart

import (
	"image/png"
	"math"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestRender(t *testing.T) {
	groups := []string{"report", "COPY --link", "all cached", "oci export"}
	panel := func(scale float64) Panel {
		return Panel{Title: "panel", Groups: groups, Bars: [][]Bar{
			{{12 * scale, 11 * scale, 13 * scale}, {9 * scale, 8 * scale, 10 * scale}, {9 * scale, 9 * scale, 9.5 * scale}, {14 * scale, 13 * scale, 15 * scale}},
			{{13 * scale, 12 * scale, 14 * scale}, {0.3, 0.25, 0.4}, {0.25, 0.2, 0.3}, {2 * scale, 1.8 * scale, 2.2 * scale}},
			{{12 * scale, 11 * scale, 13 * scale}, {0.3, 0.25, 0.4}, {0.2, 0.2, 0.3}, {math.NaN(), math.NaN(), math.NaN()}},
			{{0.5, 0.4, 0.6}, {0.04, 0.03, 0.05}, {0.1, 0.1, 0.1}, {1, 1, 1}},
		}}
	}
	out := filepath.Join(t.TempDir(), "chart.png")
	if p := os.Getenv("CHART_TEST_OUT"); p != "" {
		out = p
	}
	err := Render(out, "title", []string{"eager", "lazy", "registry", "warm"}, []Panel{panel(0.1), panel(1), panel(8)})
	require.NoError(t, err)
	f, err := os.Open(out)
	require.NoError(t, err)
	defer f.Close()
	img, err := png.Decode(f)
	require.NoError(t, err)
	require.Greater(t, img.Bounds().Dx(), img.Bounds().Dy())
}

func TestRenderNothing(t *testing.T) {
	require.ErrorContains(t, Render(filepath.Join(t.TempDir(), "x.png"), "t", nil, nil), "nothing to draw")
}

func TestSecondsTicks(t *testing.T) {
	var labels []string
	for _, tk := range (secondsTicks{}).Ticks(0.05, 100) {
		if tk.Label != "" {
			labels = append(labels, tk.Label)
		}
	}
	require.Equal(t, []string{"0.10", "1.0", "10", "100"}, labels)
}
