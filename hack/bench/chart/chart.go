// Package chart draws the benchmark's PNG: one panel per base image size,
// grouped bars per scenario, one bar per way of running build 2, on a log
// time axis because eager and lazy differ by orders of magnitude.
package chart

import (
	"fmt"
	"image/color"
	"math"
	"os"

	"github.com/pkg/errors"
	"gonum.org/v1/plot"
	"gonum.org/v1/plot/font"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// Bar is one cell: the median and the range of the runs, in seconds.
type Bar struct {
	Median, Min, Max float64
}

// Panel is one base image size.
type Panel struct {
	Title  string
	Groups []string // x categories (scenarios)
	Bars   [][]Bar  // Bars[series][group]; NaN median = not measured
}

// Palette colours the series in order; colour-blind safe (Okabe-Ito).
var Palette = []color.Color{
	color.RGBA{R: 0xd5, G: 0x5e, B: 0x00, A: 0xff},
	color.RGBA{R: 0x00, G: 0x72, B: 0xb2, A: 0xff},
	color.RGBA{R: 0x00, G: 0x9e, B: 0x73, A: 0xff},
	color.RGBA{R: 0x99, G: 0x99, B: 0x99, A: 0xff},
	color.RGBA{R: 0xcc, G: 0x79, B: 0xa7, A: 0xff},
}

// floor is the bottom of the log axis: bars start there.
const floor = 0.05

// Render writes a PNG of the panels side by side to path.
func Render(path, title string, series []string, panels []Panel) error {
	if len(panels) == 0 {
		return errors.New("chart: nothing to draw")
	}
	ymax := 1.0
	for _, p := range panels {
		for _, s := range p.Bars {
			for _, b := range s {
				if !math.IsNaN(b.Max) {
					ymax = max(ymax, b.Max)
				}
			}
		}
	}
	ymax *= 2.5 // room for the labels above the bars

	plots := make([][]*plot.Plot, 1)
	for _, pn := range panels {
		p := plot.New()
		p.Title.Text = pn.Title
		p.Title.TextStyle.Font.Size = vg.Points(13)
		p.Y.Scale = plot.LogScale{}
		p.Y.Tick.Marker = secondsTicks{}
		p.Y.Min, p.Y.Max = floor, ymax
		// every panel gets the label: plot.Align lays out unlike panels
		// with their titles at different heights
		p.Y.Label.Text = "build 2 wall time (s)"
		p.X.Tick.Label.Font.Size = vg.Points(10)
		p.Y.Tick.Label.Font.Size = vg.Points(10)
		p.Add(plotGrid{})
		n := len(pn.Bars)
		w := vg.Points(14)
		for si, s := range pn.Bars {
			b := &bars{
				vals:   s,
				width:  w,
				offset: (vg.Length(si) - vg.Length(n-1)/2) * w,
				color:  Palette[si%len(Palette)],
			}
			p.Add(b)
		}
		p.NominalX(pn.Groups...)
		p.X.Min, p.X.Max = -0.6, float64(len(pn.Groups))-0.4
		plots[0] = append(plots[0], p)
	}

	// at least as wide as the title and legend need
	width := max(vg.Length(len(panels))*5.2*vg.Inch, 12*vg.Inch)
	height := 5 * vg.Inch
	img := vgimg.NewWith(vgimg.UseWH(width, height), vgimg.UseDPI(110))
	dc := draw.New(img)
	// title strip
	titleStyle := draw.TextStyle{
		Color:   color.Black,
		Font:    font.From(plot.DefaultFont, vg.Points(14)),
		XAlign:  draw.XCenter,
		YAlign:  draw.YTop,
		Handler: plot.DefaultTextHandler,
	}
	dc.FillText(titleStyle, vg.Point{X: width / 2, Y: height - vg.Points(6)}, title)
	drawLegend(dc, series, width/2, height-vg.Points(32))
	body := draw.Crop(dc, 0, 0, 0, -vg.Points(44))
	tiles := draw.Tiles{Rows: 1, Cols: len(panels), PadX: vg.Points(10), PadTop: vg.Points(4), PadBottom: vg.Points(4), PadLeft: vg.Points(4), PadRight: vg.Points(8)}
	canvases := plot.Align(plots, tiles, body)
	for i, p := range plots[0] {
		p.Draw(canvases[0][i])
	}

	f, err := os.Create(path)
	if err != nil {
		return errors.Wrapf(err, "failed to create %s", path)
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		f.Close()
		return errors.Wrapf(err, "failed to write %s", path)
	}
	return errors.Wrapf(f.Close(), "failed to write %s", path)
}

// drawLegend writes one swatch and name per series in a row centred on x.
func drawLegend(c draw.Canvas, series []string, x, y vg.Length) {
	style := draw.TextStyle{
		Color:   color.Black,
		Font:    font.From(plot.DefaultFont, vg.Points(11)),
		XAlign:  draw.XLeft,
		YAlign:  draw.YCenter,
		Handler: plot.DefaultTextHandler,
	}
	sw, gap := vg.Points(10), vg.Points(18)
	total := vg.Length(0)
	for _, s := range series {
		total += sw + vg.Points(4) + style.Width(s) + gap
	}
	x -= (total - gap) / 2
	for i, s := range series {
		c.FillPolygon(Palette[i%len(Palette)], []vg.Point{
			{X: x, Y: y - sw/2}, {X: x, Y: y + sw/2}, {X: x + sw, Y: y + sw/2}, {X: x + sw, Y: y - sw/2},
		})
		x += sw + vg.Points(4)
		c.FillText(style, vg.Point{X: x, Y: y}, s)
		x += style.Width(s) + gap
	}
}

// bars draws one series as bars from the axis floor, with a min-max
// whisker and the median written above.
type bars struct {
	vals   []Bar
	width  vg.Length
	offset vg.Length
	color  color.Color
}

var _ plot.Plotter = &bars{}
var _ plot.DataRanger = &bars{}

func (b *bars) Plot(c draw.Canvas, p *plot.Plot) {
	trX, trY := p.Transforms(&c)
	line := draw.LineStyle{Color: color.Black, Width: vg.Points(0.8)}
	label := draw.TextStyle{
		Color:    color.Black,
		Font:     font.From(plot.DefaultFont, vg.Points(7.5)),
		XAlign:   draw.XLeft,
		YAlign:   draw.YCenter,
		Rotation: math.Pi / 2,
		Handler:  plot.DefaultTextHandler,
	}
	for i, v := range b.vals {
		if math.IsNaN(v.Median) {
			continue
		}
		x := trX(float64(i)) + b.offset
		y0, y1 := trY(floor), trY(max(v.Median, floor))
		half := b.width/2 - vg.Points(0.5)
		c.FillPolygon(b.color, []vg.Point{{X: x - half, Y: y0}, {X: x - half, Y: y1}, {X: x + half, Y: y1}, {X: x + half, Y: y0}})
		lo, hi := trY(max(v.Min, floor)), trY(max(v.Max, floor))
		c.StrokeLine2(line, x, lo, x, hi)
		c.StrokeLine2(line, x-half/2, lo, x+half/2, lo)
		c.StrokeLine2(line, x-half/2, hi, x+half/2, hi)
		c.FillText(label, vg.Point{X: x, Y: max(y1, hi) + vg.Points(3)}, seconds(v.Median))
	}
}

func (b *bars) DataRange() (xmin, xmax, ymin, ymax float64) {
	ymax = floor
	for _, v := range b.vals {
		if !math.IsNaN(v.Max) {
			ymax = max(ymax, v.Max)
		}
	}
	return 0, float64(len(b.vals) - 1), floor, ymax
}

// plotGrid draws horizontal lines at the major ticks only.
type plotGrid struct{}

func (plotGrid) Plot(c draw.Canvas, p *plot.Plot) {
	_, trY := p.Transforms(&c)
	style := draw.LineStyle{Color: color.Gray{Y: 220}, Width: vg.Points(0.5)}
	for _, t := range p.Y.Tick.Marker.Ticks(p.Y.Min, p.Y.Max) {
		if t.IsMinor() {
			continue
		}
		y := trY(t.Value)
		c.StrokeLine2(style, c.Min.X, y, c.Max.X, y)
	}
}

// secondsTicks labels 0.1, 1, 10, 100 ... and puts minor ticks between.
type secondsTicks struct{}

func (secondsTicks) Ticks(lo, hi float64) []plot.Tick {
	var out []plot.Tick
	for e := math.Floor(math.Log10(lo)); e <= math.Ceil(math.Log10(hi)); e++ {
		base := math.Pow(10, e)
		for m := 1.0; m < 10; m++ {
			v := m * base
			if v < lo*0.999 || v > hi*1.001 {
				continue
			}
			t := plot.Tick{Value: v}
			if m == 1 {
				t.Label = seconds(v)
			}
			out = append(out, t)
		}
	}
	return out
}

func seconds(v float64) string {
	switch {
	case v >= 10:
		return fmt.Sprintf("%.0f", v)
	case v >= 1:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.2f", v)
	}
}
