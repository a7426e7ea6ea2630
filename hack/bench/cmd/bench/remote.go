package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/lazylocal/buildkit/hack/bench/mdtable"
	"github.com/lazylocal/buildkit/hack/bench/scenario"
	"github.com/lazylocal/buildkit/hack/bench/stats"
	"github.com/lazylocal/buildkit/hack/remotetest/linkproxy"
	"github.com/lazylocal/buildkit/hack/remotetest/tlsfiles"
	"github.com/pkg/errors"
)

// remoteRow is the -row name of the remote builder benchmark.
const remoteRow = "remote"

// defaultRateMB is the default link between the client and the remote
// builder, in MB/s each way: 25 MB/s is 200 Mbit/s, what a CI runner
// typically has to a builder in another network (hosted runners, a builder
// fleet in another zone or cloud), and the link of issue 19's report.
const defaultRateMB = 25.0

// The remote row's own flags; main parses them with the others.
var (
	rttFlag         = flag.Duration("rtt", 0, "-row remote: the link's round trip, half of it added to each direction (20ms: a builder in another zone)")
	layersFlag      = flag.String("layers", "", "-row remote: bases by their number of layers, comma separated (7,30), each at every -size; default: one base per -size, its layers following from its size")
	remoteCasesFlag = flag.String("remote-cases", "cached,report", "-row remote: the build 2 cases, comma separated: "+remoteCaseNames())
	shapesFlag      = flag.String("shapes", "image", "-row remote, with -layers: how a base's layers are made, comma separated: image (a base image of that many layers, one cache record), steps (a 2-layer base image and RUN steps that add the other layers, a cache record each)")
)

// A base's shape: where its layers come from.
const (
	// shapeImage: FROM a base image of all the layers. The image is one
	// cache record whose chain holds every layer.
	shapeImage = "image"
	// shapeSteps: FROM a 2-layer base image, then one RUN step per other
	// layer: a cache record per layer, each with the chain below it, as
	// in a Dockerfile of many steps.
	shapeSteps = "steps"
)

func parseShapes(s string) ([]string, error) {
	var out []string
	for f := range strings.SplitSeq(s, ",") {
		f = strings.TrimSpace(f)
		if f != shapeImage && f != shapeSteps {
			return nil, errors.Errorf("-shapes %q: unknown shape %q (want image or steps)", s, f)
		}
		out = append(out, f)
	}
	return out, nil
}

// stepsDockerfile is the report's Dockerfile on baseRef with steps RUN
// steps first, each adding a layer of size random bytes (which do not
// compress: the layer's blob is as big).
func stepsDockerfile(baseRef string, steps int, size int64) string {
	first, rest, _ := strings.Cut(scenario.Dockerfile(baseRef, false), "\n")
	var b strings.Builder
	b.WriteString(first + "\n")
	for i := 1; i <= steps; i++ {
		fmt.Fprintf(&b, "RUN mkdir -p /opt/steps && head -c %d /dev/urandom > /opt/steps/%d\n", size, i)
	}
	b.WriteString(rest)
	return b.String()
}

// remoteCase is one build 2 of the remote row: a case of the report's
// rows (scenario.Cases), with or without its cache export.
type remoteCase struct {
	Name  string
	Title string
	Of    string // the scenario.Case it runs
	// NoExport: build 2 imports the cache and exports none, as the user
	// report of issue 22 ran it
	NoExport bool
	Case     scenario.Case
}

var remoteCases = []remoteCase{
	{Name: "cached", Of: "cached", Title: "all steps cached, cache exported mode=max back into the directory"},
	{Name: "noexport", Of: "cached", Title: "all steps cached, no cache export", NoExport: true},
	{Name: "report", Of: "report", Title: "report's Dockerfile (COPY . ./ changed)"},
}

func remoteCaseNames() string {
	var names []string
	for _, c := range remoteCases {
		names = append(names, c.Name+" ("+c.Title+")")
	}
	return strings.Join(names, ", ")
}

func parseRemoteCases(s string) ([]remoteCase, error) {
	var out []remoteCase
	for f := range strings.SplitSeq(s, ",") {
		f = strings.TrimSpace(f)
		i := slices.IndexFunc(remoteCases, func(c remoteCase) bool { return c.Name == f })
		if i < 0 {
			return nil, errors.Errorf("-remote-cases %q: unknown case %q (want cached, noexport or report)", s, f)
		}
		c := remoteCases[i]
		var err error
		if c.Case, err = scenario.CaseByName(c.Of); err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, nil
}

// parseLayers reads -layers: whole numbers of at least 2, or nothing.
func parseLayers(s string) ([]int, error) {
	if s == "" {
		return nil, nil
	}
	var out []int
	for f := range strings.SplitSeq(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 2 {
			return nil, errors.Errorf("-layers %q: want whole numbers of at least 2 (the rootfs and a layer of files), comma separated", s)
		}
		out = append(out, n)
	}
	return out, nil
}

// remoteColumn is one way of running build 2: which buildkitd, eager or
// lazy.
type remoteColumn struct {
	Name      string
	Title     string
	Buildkitd string
	Lazy      bool
}

// remoteRun is what one build 2 through the link measured.
type remoteRun struct {
	Build    time.Duration
	Up, Down int64 // bytes client to daemon, daemon to client
	Extract  int   // extracting lines
	// Requests the client's session served, by gRPC method
	Requests map[string]int
}

// infoRequest is the request a lazily imported local cache answers Info
// with.
const infoRequest = "containerd.services.content.v1.Content/Info"

// remoteBase is one base image of the row and what build 2 starts from.
type remoteBase struct {
	Base     scenario.BaseImage
	Shape    string
	Layers   int // the layers the build 2 gets from the base and its steps
	Dir      string
	Proj     *scenario.Project
	Pristine string // build 1's cache export
	// Compressed is the size of the cache's blobs
	Compressed int64
}

// benchRemote runs build 2 of the chosen cases, eager and lazy (and lazy
// with -baseline's buildkitd), each on a fresh buildkitd on TCP with TLS
// that bin/buildclient reaches through a proxy limited to rateMB MB/s and
// delayed by -rtt, and prints a Markdown table per base. It writes no
// report: the tables go into docs/benchmarks.md by hand, with the command
// that made them.
func benchRemote(ctx context.Context, opts options, rateMB float64) error {
	rtt := *rttFlag
	if rtt < 0 {
		return errors.Errorf("-rtt %v: want a round trip of 0 or more", rtt)
	}
	layers, err := parseLayers(*layersFlag)
	if err != nil {
		return err
	}
	cases, err := parseRemoteCases(*remoteCasesFlag)
	if err != nil {
		return err
	}
	shapes, err := parseShapes(*shapesFlag)
	if err != nil {
		return err
	}
	if len(layers) == 0 && *shapesFlag != shapeImage {
		return errors.Errorf("-shapes %s: needs -layers", *shapesFlag)
	}
	tools, err := scenario.FindTools(opts.Repo)
	if err != nil {
		return err
	}
	client := filepath.Join(opts.Repo, "bin", "buildclient")
	if _, err := os.Stat(client); err != nil {
		return errors.Errorf("%s not found: run make bin/buildclient (make bench builds it)", client)
	}
	cols := []remoteColumn{
		{Name: "eager", Title: "eager import", Buildkitd: tools.Buildkitd},
		{Name: "lazy", Title: "`lazy=true`", Buildkitd: tools.Buildkitd, Lazy: true},
	}
	versions := []string{}
	for _, b := range []string{tools.Buildkitd, opts.Baseline} {
		if b == "" {
			continue
		}
		out, err := exec.CommandContext(ctx, b, "--version").Output()
		if err != nil {
			return errors.Wrapf(err, "%s --version", b)
		}
		versions = append(versions, strings.TrimSpace(string(out)))
	}
	if opts.Baseline != "" {
		cols = append(cols, remoteColumn{Name: "lazy-base", Title: "`lazy=true`, baseline buildkitd", Buildkitd: opts.Baseline, Lazy: true})
	}

	s, err := scenario.NewSession(ctx, tools, opts.WorkDir, "lazylocal-bench-remote")
	if err != nil {
		return err
	}
	defer s.Close()
	tlsDir, err := s.Mkdir("tls")
	if err != nil {
		return err
	}
	certs, err := tlsfiles.Write(tlsDir)
	if err != nil {
		return err
	}
	started, loadStart := time.Now(), scenario.LoadAvg()

	var bases []*remoteBase
	for _, size := range opts.Sizes {
		for _, shape := range shapes {
			for _, n := range layers {
				b, err := prepareRemoteBase(ctx, s, size, n, shape)
				if err != nil {
					return errors.Wrapf(err, "size %d MB, %d layers, %s", size, n, shape)
				}
				bases = append(bases, b)
			}
		}
		if len(layers) == 0 {
			b, err := prepareRemoteBase(ctx, s, size, 0, shapeImage)
			if err != nil {
				return errors.Wrapf(err, "size %d MB", size)
			}
			bases = append(bases, b)
		}
	}
	defer func() {
		for _, b := range bases {
			scenario.RemoveAll(b.Dir)
		}
	}()

	// runs[base][case][column]; every run k goes over every base, case and
	// column, the columns in an order that rotates from run to run, so
	// that a slow spell of the shared machine does not always hit the
	// same cell
	runs := make([]map[string]map[string][]remoteRun, len(bases))
	for k := 1; k <= opts.Runs; k++ {
		for bi, b := range bases {
			if runs[bi] == nil {
				runs[bi] = map[string]map[string][]remoteRun{}
			}
			for _, c := range cases {
				rev := 0
				if c.Case.Change {
					rev = k
				}
				if err := b.Proj.SetRevision(rev); err != nil {
					return err
				}
				for i := range cols {
					col := cols[(i+k-1)%len(cols)]
					name := fmt.Sprintf("%s-%s-%d", c.Name, col.Name, k)
					r, err := remoteBuild(ctx, s, client, b, certs, c, col, rateMB, rtt, name)
					if err != nil {
						return errors.Wrapf(err, "%d layers (%s), %s, %s", b.Layers, b.Shape, c.Name, col.Name)
					}
					if runs[bi][c.Name] == nil {
						runs[bi][c.Name] = map[string][]remoteRun{}
					}
					runs[bi][c.Name][col.Name] = append(runs[bi][c.Name][col.Name], r)
					s.Logf("%d layers (%s) run %d/%d %-8s %-9s build %6.2fs, %5d Info, %7.1f MB client->daemon, %6.1f MB daemon->client, %2d extracting lines",
						b.Layers, b.Shape, k, opts.Runs, c.Name, col.Name, r.Build.Seconds(), r.Requests[infoRequest],
						float64(r.Up)/scenario.MB, float64(r.Down)/scenario.MB, r.Extract)
				}
			}
		}
	}

	var out strings.Builder
	fmt.Fprintf(&out, "remote builder: bin/buildclient -> proxy (%.0f MB/s = %.0f Mbit/s each way, round trip %v) -> buildkitd on tcp://127.0.0.1 with TLS, fresh per build; median of %d runs (min–max)\n",
		rateMB, rateMB*8, rtt, opts.Runs)
	fmt.Fprintf(&out, "buildkitd: %s\n", strings.Join(versions, "; baseline: "))
	fmt.Fprintf(&out, "started %s, %s wall; load average %s at the start, %s at the end\n\n",
		started.UTC().Format("2006-01-02 15:04 MST"), time.Since(started).Round(time.Second), loadStart, scenario.LoadAvg())
	for bi, b := range bases {
		out.WriteString(remoteTable(b, cases, cols, runs[bi]))
		out.WriteString("\n")
	}
	fmt.Println()
	fmt.Print(out.String())
	return nil
}

// prepareRemoteBase makes a base of sizeMB in layers layers (as many as
// its size gives when 0) of the shape, its project and build 1's cache
// directory, built on a local daemon: the directory the client keeps.
func prepareRemoteBase(ctx context.Context, s *scenario.Session, sizeMB, layers int, shape string) (*remoteBase, error) {
	name := fmt.Sprintf("base-%dmb", sizeMB)
	target := int64(sizeMB) * scenario.MB
	var (
		base scenario.BaseImage
		err  error
	)
	switch {
	case layers == 0:
		base, err = scenario.MakeBase(ctx, s.Tools, s.Registry, s.Config, s.Dir, name, target, s.Logf)
	case shape == shapeImage:
		name = fmt.Sprintf("base-%dmb-%dl", sizeMB, layers)
		base, err = scenario.MakeBaseLayers(ctx, s.Tools, s.Registry, s.Config, s.Dir, name, target, layers, s.Logf)
	default:
		// a small base: the steps carry the size
		name = fmt.Sprintf("base-%dmb-%dl-steps", sizeMB, layers)
		base, err = scenario.MakeBaseLayers(ctx, s.Tools, s.Registry, s.Config, s.Dir, name, scenario.MB, 2, s.Logf)
	}
	if err != nil {
		return nil, err
	}
	dir, err := s.Mkdir("remote-" + name)
	if err != nil {
		return nil, err
	}
	proj, err := scenario.WriteProject(filepath.Join(dir, "context"), base.Ref, false)
	if err != nil {
		return nil, err
	}
	b := &remoteBase{Base: base, Shape: shape, Layers: base.Layers, Dir: dir, Proj: proj, Pristine: filepath.Join(dir, "cache")}
	if shape == shapeSteps {
		steps := layers - base.Layers
		if steps < 1 {
			return nil, errors.Errorf("-shapes steps: %d layers is no more than the base's %d", layers, base.Layers)
		}
		b.Layers = layers
		df := stepsDockerfile(base.Ref, steps, target/int64(steps))
		if err := scenario.WriteFiles(proj.Dir, map[string]string{"Dockerfile": df}); err != nil {
			return nil, err
		}
	}
	runDir := filepath.Join(dir, "build1-run")
	if err := os.MkdirAll(runDir, 0o755); err != nil {
		return nil, errors.WithStack(err)
	}
	warm, err := scenario.StartDaemon(ctx, s.Tools, filepath.Join(dir, "build1-root"), s.Config, runDir)
	if err != nil {
		return nil, err
	}
	s.Logf("%s: build 1, exporting the local cache", name)
	err = buildctlLogged(ctx, warm, filepath.Join(dir, "build1.log"), proj.Args(scenario.Cache{Export: scenario.LocalCache(b.Pristine, false).Export}, ""))
	warm.Stop()
	if err != nil {
		return nil, err
	}
	if b.Compressed, err = scenario.DirBytes(filepath.Join(b.Pristine, "blobs")); err != nil {
		return nil, err
	}
	return b, nil
}

// remoteBuild runs build 2 once: the pristine cache cloned as a CI job
// restores it, a fresh TLS daemon, the proxy in front of it, the build
// client through the proxy.
func remoteBuild(ctx context.Context, s *scenario.Session, client string, b *remoteBase, certs tlsfiles.Files, c remoteCase, col remoteColumn, rateMB float64, rtt time.Duration, name string) (remoteRun, error) {
	runDir := filepath.Join(b.Dir, "run")
	if err := os.MkdirAll(runDir, 0o755); err != nil {
		return remoteRun{}, errors.WithStack(err)
	}
	defer scenario.RemoveAll(runDir)
	cacheDir := filepath.Join(runDir, "cache")
	if err := scenario.CloneCache(b.Pristine, cacheDir); err != nil {
		return remoteRun{}, err
	}
	tools := s.Tools
	tools.Buildkitd = col.Buildkitd
	d, err := scenario.StartTCPDaemon(ctx, tools, filepath.Join(runDir, "root"), s.Config, runDir, certs)
	if err != nil {
		return remoteRun{}, err
	}
	defer d.Stop()
	p, err := linkproxy.Start(d.HostPort(), rateMB*scenario.MB, linkproxy.WithDelay(rtt/2))
	if err != nil {
		return remoteRun{}, err
	}
	defer p.Close()

	cache := c.Case.LocalCache(cacheDir, col.Lazy)
	if c.NoExport {
		cache.Export = ""
	}
	logPath := filepath.Join(b.Dir, name+".log")
	reportPath := filepath.Join(b.Dir, name+".json")
	logf, err := os.OpenFile(logPath, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return remoteRun{}, errors.WithStack(err)
	}
	defer logf.Close()
	args := append(d.ClientArgs("tcp://"+p.Addr()), b.Proj.Args(cache, "")...)
	args = append(args, "--report", reportPath)
	cmd := exec.CommandContext(ctx, client, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	start := time.Now()
	err = cmd.Run()
	r := remoteRun{Build: time.Since(start)}
	r.Up, r.Down = p.Bytes()
	if err != nil {
		return r, errors.Wrapf(err, "%s; output in %s", client, logPath)
	}
	if r.Requests, err = readRequests(reportPath); err != nil {
		return r, err
	}
	if _, err := logf.Seek(0, 0); err != nil {
		return r, errors.WithStack(err)
	}
	ex, err := scenario.CountExtractions(logf)
	r.Extract = ex.Lines
	return r, err
}

// readRequests reads the requests of bin/buildclient's report.
func readRequests(path string) (map[string]int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, errors.Wrap(err, "the build client wrote no report")
	}
	var rep struct {
		Requests map[string]int `json:"requests"`
	}
	if err := json.Unmarshal(b, &rep); err != nil {
		return nil, errors.Wrapf(err, "failed to parse the build client's report %s", path)
	}
	if rep.Requests == nil {
		return nil, errors.Errorf("the build client's report %s has no requests", path)
	}
	return rep.Requests, nil
}

// remoteTable is the Markdown table of one base: a row per case, a column
// per way of running build 2, and lazy's time over eager's.
func remoteTable(b *remoteBase, cases []remoteCase, cols []remoteColumn, runs map[string]map[string][]remoteRun) string {
	title := fmt.Sprintf("~%d MB base (%d MB compressed, %d layers)", b.Base.Target/scenario.MB, b.Base.Compressed/scenario.MB, b.Base.Layers)
	if b.Shape == shapeSteps {
		title = fmt.Sprintf("%d layers: a %d-layer base and %d RUN steps (cache %d MB)", b.Layers, b.Base.Layers, b.Layers-b.Base.Layers, b.Compressed/scenario.MB)
	}
	header := []string{title}
	for _, col := range cols {
		header = append(header, col.Title)
	}
	tbl := mdtable.Table{Header: append(header, "lazy/eager time")}
	for _, c := range cases {
		row := []string{c.Title}
		for _, col := range cols {
			row = append(row, remoteCell(runs[c.Name][col.Name]))
		}
		row = append(row, fmt.Sprintf("%.3f", stats.Ratio(medianBuild(runs[c.Name]["lazy"]), medianBuild(runs[c.Name]["eager"]))))
		tbl.AddRow(row...)
	}
	return tbl.Markdown()
}

func medianBuild(rs []remoteRun) float64 {
	var t stats.Sample
	for _, r := range rs {
		t = append(t, r.Build.Seconds())
	}
	return t.Median()
}

// remoteCell is one cell: time, Info requests, bytes each way and
// extracting lines, medians over the runs, with the time's and the Info
// count's range.
func remoteCell(rs []remoteRun) string {
	if len(rs) == 0 {
		return "–"
	}
	var t, info, up, down, ex stats.Sample
	for _, r := range rs {
		t = append(t, r.Build.Seconds())
		info = append(info, float64(r.Requests[infoRequest]))
		up = append(up, float64(r.Up))
		down = append(down, float64(r.Down))
		ex = append(ex, float64(r.Extract))
	}
	infos := fmt.Sprintf("%.0f", info.Median())
	if info.Min() != info.Max() {
		infos += fmt.Sprintf(" (%.0f–%.0f)", info.Min(), info.Max())
	}
	return fmt.Sprintf("%s (%s–%s)<br>**%s Info** · %s client→daemon, %s daemon→client · %.0f extracting",
		secs(t.Median()), secs(t.Min()), secs(t.Max()), infos, bytesHuman(up.Median()), bytesHuman(down.Median()), ex.Median())
}

func secs(s float64) string {
	if s < 10 {
		return fmt.Sprintf("%.2f s", s)
	}
	return fmt.Sprintf("%.1f s", s)
}

func bytesHuman(b float64) string {
	switch {
	case b >= scenario.MB:
		return fmt.Sprintf("%.0f MB", b/scenario.MB)
	default:
		return fmt.Sprintf("%.0f KB", b/1000)
	}
}
