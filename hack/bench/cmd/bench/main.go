// Command bench measures build 2 of the daemonless rebuild scenarios of
// make demo as a matrix (scenario x way of importing the cache x base image
// size) and writes the repository's docs/benchmarks.md and a PNG chart from
// the same run. From hack/bench (make bench):
//
//	go run ./cmd/bench                      # everything: 50, 350, 1200 MB
//	go run ./cmd/bench -size 350 -row cached,link
//
// -row remote is a benchmark of its own: build 2 on a remote builder (a
// fresh buildkitd on TCP with TLS) through a proxy limited to -rate MB/s
// each way, eager vs lazy, all cached and the report's Dockerfile. It
// prints its table and writes no report:
//
//	go run ./cmd/bench -size 350 -row remote
//
// -row unpack is another benchmark of its own: extracting a layer chain.
// Build 2 of the report's Dockerfile, rootful through the daemonless
// wrapper (and with -unpack rootless, in our rootless image through the
// report's docker run script), a cold FROM + RUN (the base pulled from the
// loopback registry) and the same with the base's layers from a zstd
// cache, each build on a fresh daemon, on three daemons interleaved: ours
// (bin/), the baseline series (bin/baseline/) and upstream's unchanged
// binaries at the pin (bin/upstream/), eager and lazy import where the
// daemon has it. Per build it reads the layers' extraction times from the
// daemon's progress, the daemon's CPU and disk writes from /proc, and the
// gzip decompressors' CPU. It prints its tables and writes a report only
// with -md:
//
//	go run ./cmd/bench -row unpack                       # -size 350 -runs 3
//	go run ./cmd/bench -row unpack -unpack report,rootless -gunzip unpigz
//
// bin/buildclient runs its builds and counts the requests the client
// served (Info of a lazily imported cache among them). -rtt adds a round
// trip to the link, -layers makes bases by their number of layers (-shapes:
// a base image of them, or a small one and a RUN step per other layer),
// -remote-cases picks the builds (remote.go):
//
//	go run ./cmd/bench -size 350 -row remote -rtt 20ms -layers 7,30 -shapes image,steps -remote-cases cached,noexport -baseline OTHER/buildkitd
//
// -row clients (clients.go) is another: the export to a new directory by
// client (buildctl, stock buildx, our buildx) and on a remote builder.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/lazylocal/buildkit/hack/bench/scenario"
	"github.com/pkg/errors"
)

// column is one way of running build 2.
type column struct {
	Name  string
	Title string
}

var columns = []column{
	{Name: "eager", Title: "eager local import"},
	{Name: "lazy", Title: "lazy local import"},
	{Name: "registry", Title: "registry cache import"},
	{Name: "warm", Title: "warm daemon (floor)"},
}

// cell holds the runs of one (size, row, column).
type cell struct {
	Runs []scenario.Result
	Errs []string
}

type sizeResult struct {
	TargetMB int
	Base     scenario.BaseImage
	Cells    map[string]map[string]*cell // row -> column
}

func (r *sizeResult) cell(row, col string) *cell {
	if r.Cells[row] == nil {
		r.Cells[row] = map[string]*cell{}
	}
	if r.Cells[row][col] == nil {
		r.Cells[row][col] = &cell{}
	}
	return r.Cells[row][col]
}

type options struct {
	Sizes   []int
	Rows    []scenario.Case
	Runs    int
	MD, PNG string
	WorkDir string
	Repo    string
	Args    []string
	// Baseline is another buildkitd to compare the lazy column with.
	Baseline string
}

func main() {
	sizes := flag.String("size", "50,350,1200", "base image compressed sizes in MB, comma separated")
	rows := flag.String("row", "report,link,cached,oci,newdir,reset", "scenarios to run, comma separated (report, link, cached, oci, newdir, reset), or remote or clients alone: the remote builder benchmark, or the export to a new directory by client, which print their tables and write no report")
	rate := flag.Float64("rate", defaultRateMB, "-row remote: the link's limit in MB/s each way (0: unlimited)")
	runs := flag.Int("runs", 3, "runs of build 2 per cell")
	md := flag.String("md", "", "Markdown report to write (default <repo>/docs/benchmarks.md)")
	png := flag.String("png", "", "PNG chart to write (default <repo>/docs/benchmarks.png)")
	workDir := flag.String("workdir", os.TempDir(), "parent of the benchmark's temporary directory")
	baseline := flag.String("baseline", "", "another buildkitd binary (an earlier build) to run the lazy column with as well, interleaved, as the column \"lazy, baseline buildkitd\"")
	repo := flag.String("repo", "", "repository root, holding bin/ and daemonless/ (default: the nearest directory at or above the working directory holding Makefile and .git)")
	unpack := flag.String("unpack", defaultUnpackCases, "-row unpack: its rows, comma separated (report, rootless, cold, zstd); rootless needs make image")
	gunzip := flag.String("gunzip", "igzip", "-row unpack: what the daemons decompress gzip layers with: igzip, unpigz or go (containerd's own code)")
	baselineBin := flag.String("baseline-bin", "", "-row unpack: directory holding the baseline series' buildkitd and buildctl (default <repo>/bin/baseline, make build-others)")
	upstreamBin := flag.String("upstream-bin", "", "-row unpack: directory holding upstream's buildkitd and buildctl at the pin (default <repo>/bin/upstream, make build-others)")
	profileDir := flag.String("profile", "", "-row unpack: write a CPU profile of each rootful build 2's buildkitd (its first -profile-seconds) to this directory, as CASE-DAEMON-IMPORT-RUN.pprof")
	profileSecs := flag.Int("profile-seconds", 10, "-row unpack -profile: how many seconds of each build to profile (a build that ends sooner leaves no profile)")
	flag.Parse()
	given := map[string]bool{}
	flag.Visit(func(f *flag.Flag) { given[f.Name] = true })

	opts := options{Runs: *runs, MD: *md, PNG: *png, WorkDir: *workDir, Repo: *repo, Args: os.Args[1:], Baseline: *baseline}
	if opts.Baseline != "" {
		columns = append(columns, column{Name: "lazy-base", Title: "lazy, baseline buildkitd"})
	}
	var err error
	remote := *rows == remoteRow
	unpacking := *rows == unpackRow
	clients := *rows == clientsRow
	if unpacking && !given["size"] {
		*sizes = "350"
	}
	if opts.Sizes, err = parseSizes(*sizes); err == nil && !remote && !unpacking && !clients {
		opts.Rows, err = parseRows(*rows)
	}
	if err == nil && unpacking && len(opts.Sizes) != 1 {
		err = errors.Errorf("-row %s takes one -size, got %q", unpackRow, *sizes)
	}
	if err == nil && *rate < 0 {
		err = errors.Errorf("-rate %v: want MB/s, 0 for unlimited", *rate)
	}
	if err == nil {
		err = opts.resolvePaths()
	}
	if err == nil && opts.Runs < 1 {
		err = errors.Errorf("-runs %d: want at least 1", opts.Runs)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(2)
	}
	ctx, stop := scenario.SignalContext(context.Background())
	defer stop()
	switch {
	case remote:
		err = benchRemote(ctx, opts, *rate)
	case unpacking:
		var uo unpackOpts
		if uo, err = newUnpackOpts(opts, *unpack, *gunzip, *baselineBin, *upstreamBin, given["md"], *profileDir, *profileSecs); err == nil {
			err = benchUnpack(ctx, uo)
		}
	case clients:
		err = benchClients(ctx, opts, *rate)
	default:
		err = run(ctx, opts)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// resolvePaths fills in the repository root (when -repo is not given) and
// the report's default place, the repository's docs/, wherever the command
// runs from (make bench runs it in hack/bench).
func (o *options) resolvePaths() error {
	if o.Repo == "" {
		root, err := scenario.FindRepoRoot(".")
		if err != nil {
			return err
		}
		o.Repo = root
	}
	if o.MD == "" {
		o.MD = filepath.Join(o.Repo, "docs", "benchmarks.md")
	}
	if o.PNG == "" {
		o.PNG = filepath.Join(o.Repo, "docs", "benchmarks.png")
	}
	return nil
}

func parseSizes(s string) ([]int, error) {
	var out []int
	for f := range strings.SplitSeq(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n <= 0 {
			return nil, errors.Errorf("-size %q: want positive whole MB, comma separated", s)
		}
		out = append(out, n)
	}
	return out, nil
}

func parseRows(s string) ([]scenario.Case, error) {
	var out []scenario.Case
	for f := range strings.SplitSeq(s, ",") {
		c, err := scenario.CaseByName(strings.TrimSpace(f))
		if err != nil && (strings.TrimSpace(f) == remoteRow || strings.TrimSpace(f) == unpackRow) {
			return nil, errors.Errorf("-row %s runs alone: it prints its own table", strings.TrimSpace(f))
		}
		if err != nil {
			return nil, errors.Wrap(err, "-row")
		}
		out = append(out, c)
	}
	return out, nil
}

func run(ctx context.Context, opts options) error {
	tools, err := scenario.FindTools(opts.Repo)
	if err != nil {
		return err
	}
	for _, p := range []string{opts.MD, opts.PNG} {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return errors.WithStack(err)
		}
	}
	s, err := scenario.NewSession(ctx, tools, opts.WorkDir, "lazylocal-bench")
	if err != nil {
		return err
	}
	defer s.Close()

	rep := &report{Opts: opts, Started: time.Now(), Machine: scenario.DescribeMachine(tools), Mode: s.Daemonless.Mode()}
	rep.LoadStart = rep.Machine.LoadAvg
	if opts.Baseline != "" {
		out, err := exec.CommandContext(ctx, opts.Baseline, "--version").Output()
		if err != nil {
			return errors.Wrapf(err, "baseline buildkitd %s", opts.Baseline)
		}
		rep.BaselineVersion = strings.TrimSpace(string(out))
	}
	s.Logf("machine: %d cores, kernel %s, %s", rep.Machine.Cores, rep.Machine.Kernel, rep.Machine.Buildkitd)
	for _, size := range opts.Sizes {
		res, err := benchSize(ctx, s, opts, size, rep)
		if res != nil {
			rep.Sizes = append(rep.Sizes, res)
		}
		if err != nil {
			return errors.Wrapf(err, "size %d MB", size)
		}
		// written after every size, so a long run that is stopped
		// leaves what it measured so far (the report says which sizes)
		rep.Wall = time.Since(rep.Started)
		rep.LoadEnd = scenario.LoadAvg()
		if err := rep.write(); err != nil {
			return err
		}
		s.Logf("wrote %s and %s (%d of %d sizes)", opts.MD, opts.PNG, len(rep.Sizes), len(opts.Sizes))
	}
	fmt.Println()
	fmt.Print(rep.summary())
	return nil
}

// benchSize runs every selected row and column on one base image size.
func benchSize(ctx context.Context, s *scenario.Session, opts options, sizeMB int, rep *report) (*sizeResult, error) {
	base, err := scenario.MakeBase(ctx, s.Tools, s.Registry, s.Config, s.Dir, fmt.Sprintf("base-%dmb", sizeMB), int64(sizeMB)*scenario.MB, s.Logf)
	if err != nil {
		return nil, err
	}
	res := &sizeResult{TargetMB: sizeMB, Base: base, Cells: map[string]map[string]*cell{}}
	dir, err := s.Mkdir(fmt.Sprintf("size-%d", sizeMB))
	if err != nil {
		return res, err
	}
	defer scenario.RemoveAll(dir)

	// One warm daemon per size makes build 1 of each Dockerfile: its
	// local and registry cache exports are what every cold build 2
	// imports, and it stays up as the floor column.
	warmRun := filepath.Join(dir, "warm-run")
	if err := os.MkdirAll(warmRun, 0o755); err != nil {
		return res, errors.WithStack(err)
	}
	warm, err := scenario.StartDaemon(ctx, s.Tools, filepath.Join(dir, "warm-root"), s.Config, warmRun)
	if err != nil {
		return res, err
	}
	defer warm.Stop()
	if rep.Machine.Snapshotter == "" {
		if rep.Machine.Snapshotter, err = warm.Snapshotter(ctx); err != nil {
			return res, err
		}
	}

	type group struct {
		proj     *scenario.Project
		pristine string
		b1       string
	}
	groups := map[bool]*group{}
	for _, row := range opts.Rows {
		if groups[row.Link] != nil {
			continue
		}
		name := "copy"
		if row.Link {
			name = "link"
		}
		proj, err := scenario.WriteProject(filepath.Join(dir, "context-"+name), base.Ref, row.Link)
		if err != nil {
			return res, err
		}
		g := &group{proj: proj, pristine: filepath.Join(dir, "cache-"+name), b1: fmt.Sprintf("%s/cache-%dmb-%s:b1", s.Registry.Addr, sizeMB, name)}
		groups[row.Link] = g
		logPath := filepath.Join(dir, "build1-"+name+".log")
		s.Logf("%d MB, %s Dockerfile: build 1 on the warm daemon, exporting the local cache and the registry cache", sizeMB, name)
		for _, c := range []scenario.Cache{
			{Export: scenario.LocalCache(g.pristine, false).Export},
			{Export: "type=registry,ref=" + g.b1 + ",mode=max"},
		} {
			if err := buildctlLogged(ctx, warm, logPath, proj.Args(c, "")); err != nil {
				return res, err
			}
		}
	}

	for k := 1; k <= opts.Runs; k++ {
		for _, row := range opts.Rows {
			g := groups[row.Link]
			rev := 0
			if row.Change {
				rev = k
			}
			if err := g.proj.SetRevision(rev); err != nil {
				return res, err
			}
			// rotate the order of columns from run to run, so that a slow
			// spell of the shared machine does not always hit the same one
			for i := range columns {
				col := columns[(i+k-1)%len(columns)]
				r, err := runCell(ctx, s, warm, dir, g.proj, g.pristine, g.b1, row, col, sizeMB, k, opts.Baseline)
				c := res.cell(row.Name, col.Name)
				if err != nil {
					if ctx.Err() != nil {
						return res, ctx.Err()
					}
					c.Errs = append(c.Errs, err.Error())
					s.Logf("%d MB run %d/%d %s/%s: FAILED: %v", sizeMB, k, opts.Runs, row.Name, col.Name, err)
					continue
				}
				c.Runs = append(c.Runs, r)
				s.Logf("%d MB run %d/%d %-6s %-8s build %6.2fs (total %6.2fs), %2d extracting lines, %5.0f MB under --root, %4.0f MB peak RSS",
					sizeMB, k, opts.Runs, row.Name, col.Name, r.Build.Seconds(), r.Total.Seconds(), r.Extract.Lines,
					float64(r.RootBytes)/scenario.MB, float64(r.PeakRSS)/scenario.MB)
			}
		}
	}
	return res, nil
}

// runCell runs build 2 of row once, the way column says.
func runCell(ctx context.Context, s *scenario.Session, warm *scenario.Daemon, dir string, proj *scenario.Project, pristine, b1 string, row scenario.Case, col column, sizeMB, k int, baseline string) (scenario.Result, error) {
	runDir := filepath.Join(dir, "run")
	if err := os.MkdirAll(runDir, 0o755); err != nil {
		return scenario.Result{}, errors.WithStack(err)
	}
	defer scenario.RemoveAll(runDir)
	output := ""
	if row.OCI {
		output = "type=oci,dest=" + filepath.Join(runDir, "image.tar")
	}
	logPath := filepath.Join(dir, fmt.Sprintf("%s-%s-%d.log", row.Name, col.Name, k))
	cacheDir := filepath.Join(runDir, "cache")
	root := filepath.Join(runDir, "root")
	switch col.Name {
	case "eager", "lazy":
		// every run starts from build 1's export, as a CI job restoring
		// its cache directory would
		if err := scenario.CloneCache(pristine, cacheDir); err != nil {
			return scenario.Result{}, err
		}
		r, err := s.Daemonless.Build(ctx, root, proj.Args(row.LocalCache(cacheDir, col.Name == "lazy"), output), logPath)
		if err == nil && row.NewDir && col.Name == "lazy" {
			// the floor of an export to a new directory, on the same
			// machine in the same run: hashing what landed there
			r.HashFloor, r.HashBytes, err = scenario.HashDir(scenario.NewDir(cacheDir))
		}
		return r, err
	case "lazy-base":
		if err := scenario.CloneCache(pristine, cacheDir); err != nil {
			return scenario.Result{}, err
		}
		d := *s.Daemonless
		d.Tools.Buildkitd = baseline
		return d.Build(ctx, root, proj.Args(row.LocalCache(cacheDir, true), output), logPath)
	case "registry":
		export := strings.TrimSuffix(b1, ":b1") + fmt.Sprintf(":%s-%d", row.Name, k)
		if row.NewDir {
			// a repository of its own: no layer is there yet
			export = fmt.Sprintf("%s/cache-new-%dmb-%d:%s", s.Registry.Addr, sizeMB, k, row.Name)
		}
		return s.Daemonless.Build(ctx, root, proj.Args(scenario.RegistryCache(b1, export), output), logPath)
	case "warm":
		if err := scenario.CloneCache(pristine, cacheDir); err != nil {
			return scenario.Result{}, err
		}
		return warm.MeasureBuild(ctx, proj.Args(row.LocalCache(cacheDir, true), output), logPath)
	}
	return scenario.Result{}, errors.Errorf("unknown column %q", col.Name)
}

func buildctlLogged(ctx context.Context, d *scenario.Daemon, logPath string, args []string) error {
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return errors.WithStack(err)
	}
	defer f.Close()
	if err := d.Buildctl(ctx, f, args...); err != nil {
		b, _ := os.ReadFile(logPath)
		if len(b) > 3000 {
			b = b[len(b)-3000:]
		}
		return errors.Wrapf(err, "output: %s", b)
	}
	return nil
}
