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

func TestParseLayers(t *testing.T) {
	got, err := parseLayers("7, 30")
	require.NoError(t, err)
	require.Equal(t, []int{7, 30}, got)
	got, err = parseLayers("")
	require.NoError(t, err)
	require.Nil(t, got, "no -layers: bases shaped by their size")
	for _, s := range []string{"1", "7,x", "7,"} {
		_, err := parseLayers(s)
		require.EqualError(t, err, `-layers "`+s+`": want whole numbers of at least 2 (the rootfs and a layer of files), comma separated`)
	}
}

func TestParseRemoteCases(t *testing.T) {
	got, err := parseRemoteCases("cached,noexport")
	require.NoError(t, err)
	require.Len(t, got, 2)
	require.Equal(t, "cached", got[0].Case.Name)
	require.False(t, got[0].NoExport)
	require.Equal(t, "cached", got[1].Case.Name, "noexport runs the cached case")
	require.True(t, got[1].NoExport)
	_, err = parseRemoteCases("cached,oci")
	require.EqualError(t, err, `-remote-cases "cached,oci": unknown case "oci" (want cached, noexport or report)`)
	// every default case resolves
	_, err = parseRemoteCases(*remoteCasesFlag)
	require.NoError(t, err)
}

func TestRemoteCell(t *testing.T) {
	run := func(secs float64, info int) remoteRun {
		return remoteRun{Build: time.Duration(secs * float64(time.Second)), Up: 2 * scenario.MB, Down: 52_000, Extract: 0,
			Requests: map[string]int{infoRequest: info, "containerd.services.content.v1.Content/Read": 2}}
	}
	require.Equal(t, "0.70 s (0.60 s–12.0 s)<br>**40 Info** · 2 MB client→daemon, 52 KB daemon→client · 0 extracting",
		remoteCell([]remoteRun{run(0.7, 40), run(12, 40), run(0.6, 40)}))
	require.Equal(t, "0.70 s (0.60 s–0.90 s)<br>**41 (40–44) Info** · 2 MB client→daemon, 52 KB daemon→client · 0 extracting",
		remoteCell([]remoteRun{run(0.7, 40), run(0.9, 41), run(0.6, 44)}))
	require.Equal(t, "–", remoteCell(nil))
}

func TestRemoteTable(t *testing.T) {
	cases, err := parseRemoteCases("cached")
	require.NoError(t, err)
	cols := []remoteColumn{{Name: "eager", Title: "eager import"}, {Name: "lazy", Title: "`lazy=true`"}}
	r := func(secs float64) []remoteRun {
		return []remoteRun{{Build: time.Duration(secs * float64(time.Second)), Requests: map[string]int{infoRequest: 9}}}
	}
	runs := map[string]map[string][]remoteRun{"cached": {"eager": r(40), "lazy": r(2)}}
	md := remoteTable(&remoteBase{Base: scenario.BaseImage{Target: 350 * scenario.MB, Compressed: 395 * scenario.MB, Layers: 30}, Shape: shapeImage, Layers: 30}, cases, cols, runs)
	lines := strings.Split(strings.TrimSpace(md), "\n")
	require.Len(t, lines, 3, md)
	require.Equal(t, "| ~350 MB base (395 MB compressed, 30 layers) | eager import | `lazy=true` | lazy/eager time |", lines[0])
	require.True(t, strings.HasPrefix(lines[2], "| all steps cached, cache exported mode=max back into the directory | 40.0 s"), lines[2])
	require.True(t, strings.HasSuffix(lines[2], "| 0.050 |"), lines[2])

	md = remoteTable(&remoteBase{Base: scenario.BaseImage{Target: scenario.MB, Layers: 2}, Shape: shapeSteps, Layers: 30, Compressed: 351 * scenario.MB}, cases, cols, runs)
	require.True(t, strings.HasPrefix(md, "| 30 layers: a 2-layer base and 28 RUN steps (cache 351 MB) | eager import |"), md)
}

func TestParseShapes(t *testing.T) {
	got, err := parseShapes("image, steps")
	require.NoError(t, err)
	require.Equal(t, []string{shapeImage, shapeSteps}, got)
	_, err = parseShapes("image,layers")
	require.EqualError(t, err, `-shapes "image,layers": unknown shape "layers" (want image or steps)`)
}

func TestStepsDockerfile(t *testing.T) {
	df := stepsDockerfile("r/base:latest", 2, 1000)
	require.Equal(t, "FROM r/base:latest\n"+
		"RUN mkdir -p /opt/steps && head -c 1000 /dev/urandom > /opt/steps/1\n"+
		"RUN mkdir -p /opt/steps && head -c 1000 /dev/urandom > /opt/steps/2\n"+
		strings.TrimPrefix(scenario.Dockerfile("r/base:latest", false), "FROM r/base:latest\n"), df)
}

func TestReadRequests(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "r.json")
	require.NoError(t, os.WriteFile(p, []byte(`{"seconds": 1.5, "requests": {"`+infoRequest+`": 12}}`), 0o644))
	got, err := readRequests(p)
	require.NoError(t, err)
	require.Equal(t, map[string]int{infoRequest: 12}, got)

	require.NoError(t, os.WriteFile(p, []byte(`{"seconds": 1.5}`), 0o644))
	_, err = readRequests(p)
	require.EqualError(t, err, "the build client's report "+p+" has no requests")
	_, err = readRequests(filepath.Join(dir, "missing.json"))
	require.ErrorContains(t, err, "the build client wrote no report")
}
