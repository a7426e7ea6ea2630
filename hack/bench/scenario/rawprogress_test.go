package scenario

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestParseRawProgress(t *testing.T) {
	// two layers, the second overlapping the first by 1 s, each status in
	// several updates; a pull status and a wrapper line are ignored; a
	// third layer never completes (the build failed)
	in := `buildctl-daemonless.sh: something the wrapper said
{"vertexes":[{"digest":"sha256:v1","name":"[1/3] FROM base"}]}
{"statuses":[{"id":"extracting sha256:aaa","vertex":"sha256:v1","name":"extracting","current":0,"timestamp":"2026-01-01T00:00:01Z","started":"2026-01-01T00:00:01Z"}]}
{"statuses":[{"id":"sha256:aaa","vertex":"sha256:v1","name":"downloading","current":5,"timestamp":"2026-01-01T00:00:00Z","started":"2026-01-01T00:00:00Z","completed":"2026-01-01T00:00:09Z"}]}
{"statuses":[{"id":"extracting sha256:bbb","vertex":"sha256:v1","current":0,"timestamp":"2026-01-01T00:00:03Z","started":"2026-01-01T00:00:03Z"}]}
{"statuses":[{"id":"extracting sha256:aaa","vertex":"sha256:v1","current":0,"timestamp":"2026-01-01T00:00:04Z","started":"2026-01-01T00:00:01Z","completed":"2026-01-01T00:00:04Z"}]}
{"statuses":[{"id":"extracting sha256:bbb","vertex":"sha256:v1","current":0,"timestamp":"2026-01-01T00:00:05.5Z","started":"2026-01-01T00:00:03Z","completed":"2026-01-01T00:00:05.5Z"}]}
{"statuses":[{"id":"extracting sha256:ccc","vertex":"sha256:v1","current":0,"timestamp":"2026-01-01T00:00:06Z","started":"2026-01-01T00:00:06Z"}]}
`
	e, err := ParseRawProgress(strings.NewReader(in))
	require.NoError(t, err)
	require.Len(t, e.Layers, 2)
	require.Equal(t, "sha256:aaa", e.Layers[0].Digest)
	require.Equal(t, 3*time.Second, e.Layers[0].Duration())
	require.Equal(t, "sha256:bbb", e.Layers[1].Digest)
	require.Equal(t, 2500*time.Millisecond, e.Layers[1].Duration())
	require.Equal(t, 5500*time.Millisecond, e.Sum())
	require.Equal(t, 3*time.Second, e.Largest())
	require.Equal(t, 4500*time.Millisecond, e.Busy(), "1 s to 5.5 s")

	_, err = ParseRawProgress(strings.NewReader("{not json\n"))
	require.ErrorContains(t, err, "malformed rawjson progress line")
}

func TestExtractedBusy(t *testing.T) {
	at := func(s float64) time.Time { return time.Unix(0, 0).Add(time.Duration(s * float64(time.Second))) }
	for _, tc := range []struct {
		name   string
		layers [][2]float64
		want   time.Duration
	}{
		{name: "none"},
		{name: "one after another, with a gap", layers: [][2]float64{{0, 2}, {3, 4}}, want: 3 * time.Second},
		{name: "side by side", layers: [][2]float64{{0, 4}, {0, 3}, {1, 2}}, want: 4 * time.Second},
		{name: "chained overlaps", layers: [][2]float64{{0, 2}, {1, 3}, {2.5, 5}}, want: 5 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var e Extracted
			for _, l := range tc.layers {
				e.Layers = append(e.Layers, LayerTime{Start: at(l[0]), End: at(l[1])})
			}
			require.Equal(t, tc.want, e.Busy())
		})
	}
}
