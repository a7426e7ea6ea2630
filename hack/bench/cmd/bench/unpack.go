package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/lazylocal/buildkit/hack/bench/scenario"
	"github.com/pkg/errors"
)

// unpackRow is the -row name of the benchmark of extracting a layer chain:
// build 2 of the report's Dockerfile, and a cold FROM + RUN, on three
// daemons side by side (ours, the baseline series, upstream's unchanged
// binaries), each build on a fresh daemon. It prints its tables and
// writes a report only with -md.
const unpackRow = "unpack"

// unpackCase is one row of the unpack benchmark.
type unpackCase struct {
	Name  string
	Title string
	// Report: the report's Dockerfile, its COPY . ./ changed between
	// build 1 and build 2; otherwise FROM the base + one RUN whose build
	// argument changes.
	Report bool
	// Rootless runs build 2 in our rootless image under Docker, through
	// the report's docker run script.
	Rootless bool
	// Cache is how build 1 exports the cache build 2 imports: "" for none
	// (a cold build: the base is pulled from the registry), or the
	// --export-cache attributes after type=local,dest=DIR,mode=max.
	Cache string
}

var unpackCases = []unpackCase{
	{Name: "report", Title: "report's Dockerfile, build 2, rootful (daemonless wrapper)", Report: true, Cache: "gzip"},
	{Name: "rootless", Title: "report's Dockerfile, build 2, rootless image (the report's docker run script)", Report: true, Rootless: true, Cache: "gzip"},
	{Name: "cold", Title: "cold FROM + RUN: the base pulled from the registry, nothing cached"},
	// A FROM + RUN whose RUN changed would not do: BuildKit pulls an image
	// source from its registry even when the imported cache holds its
	// layers, so the base would come as gzip from the registry again.
	{Name: "zstd", Title: "report's Dockerfile, build 2, rootful, the cache exported as zstd (compression=zstd,force-compression=true)", Report: true, Cache: "compression=zstd,force-compression=true"},
}

const defaultUnpackCases = "report,cold,zstd"

func parseUnpackCases(s string) ([]unpackCase, error) {
	var out []unpackCase
	seen := map[string]bool{}
	for f := range strings.SplitSeq(s, ",") {
		f = strings.TrimSpace(f)
		found := false
		for _, c := range unpackCases {
			if c.Name == f {
				found = true
				if !seen[f] {
					out = append(out, c)
					seen[f] = true
				}
			}
		}
		if !found {
			var names []string
			for _, c := range unpackCases {
				names = append(names, c.Name)
			}
			return nil, errors.Errorf("-unpack %q: unknown row %q (want some of %s)", s, f, strings.Join(names, ", "))
		}
	}
	return out, nil
}

// exportCache is build 1's (and build 2's) --export-cache of case c.
func (c unpackCase) exportCache(dir string) string {
	e := "type=local,dest=" + dir + ",mode=max"
	if c.Cache != "gzip" {
		e += "," + c.Cache
	}
	return e
}

// daemon is one buildkitd and its buildctl.
type daemon struct {
	Name      string // as column names use it: ours, baseline, upstream
	Dir       string // holds buildkitd and buildctl
	Version   string
	HasLazy   bool
	Buildkitd string
	Buildctl  string
}

func findDaemonDir(name, dir string, hasLazy bool) (*daemon, error) {
	d := &daemon{Name: name, Dir: dir, HasLazy: hasLazy, Buildkitd: filepath.Join(dir, "buildkitd"), Buildctl: filepath.Join(dir, "buildctl")}
	for _, p := range []string{d.Buildkitd, d.Buildctl} {
		if _, err := os.Stat(p); err != nil {
			return nil, errors.Wrapf(err, "%s daemon: missing %s: run make build-others (or make bench, which does)", name, p)
		}
	}
	out, err := exec.Command(d.Buildkitd, "--version").Output()
	if err != nil {
		return nil, errors.Wrapf(err, "%s --version", d.Buildkitd)
	}
	d.Version = strings.TrimSpace(string(out))
	return d, nil
}

// unpackCol is one way of running build 2: a daemon, importing the cache
// eagerly or lazily (a cold row has no cache: Lazy is false).
type unpackCol struct {
	D    *daemon
	Lazy bool
}

func (c unpackCol) key() string {
	if c.Lazy {
		return c.D.Name + "/lazy"
	}
	return c.D.Name + "/eager"
}

func (c unpackCol) title(cached bool) string {
	switch {
	case !cached:
		return c.D.Name
	case c.Lazy:
		return c.D.Name + ", lazy"
	default:
		return c.D.Name + ", eager"
	}
}

// columns of a case: every daemon eager, and lazy where it has it.
func unpackColumns(c unpackCase, daemons []*daemon) []unpackCol {
	var out []unpackCol
	for _, d := range daemons {
		out = append(out, unpackCol{D: d})
		if c.Cache != "" && d.HasLazy {
			out = append(out, unpackCol{D: d, Lazy: true})
		}
	}
	return out
}

// unpackRun is what one build 2 measured.
type unpackRun struct {
	scenario.Result
	Extracted scenario.Extracted
	Decomp    []scenario.DecompressorRun
}

func (r unpackRun) decompCPU() time.Duration {
	var t time.Duration
	for _, d := range r.Decomp {
		t += d.CPU
	}
	return t
}

// cpu is everything the daemon and its children used.
func (r unpackRun) cpu() time.Duration { return r.Usage.CPU + r.Usage.ChildCPU }

// rest is the build's time when no layer was being extracted.
func (r unpackRun) rest() time.Duration { return r.Build - r.Extracted.Busy() }

// beforeAfter splits rest: the time from the build's start to the first
// extraction, and from the last one to the build's end (zero when unknown).
func (r unpackRun) beforeAfter() (time.Duration, time.Duration) {
	l := r.Extracted.Layers
	if len(l) == 0 || r.BuildStart.IsZero() {
		return 0, 0
	}
	end := l[0].End
	for _, x := range l {
		if x.End.After(end) {
			end = x.End
		}
	}
	return l[0].Start.Sub(r.BuildStart), r.BuildEnd.Sub(end)
}

// bound is the least build 2 could take with its layers applied side by
// side on cores, if each took as long as it did here: what is not
// extraction, plus the longest layer or the layers' total over the cores,
// whichever is more. For a run that applied its layers one at a time it
// is the target of doing them in parallel.
func (r unpackRun) bound(cores int) time.Duration {
	return r.rest() + max(r.Extracted.Largest(), r.Extracted.Sum()/time.Duration(max(cores, 1)))
}

type unpackOpts struct {
	options
	Cases   []unpackCase
	Gunzip  string
	Daemons []*daemon
	// WriteMD: -md was given; the report goes there.
	WriteMD bool
	// ProfileDir, when set, gets a CPU profile of every rootful build 2's
	// buildkitd, the first ProfileSeconds of it.
	ProfileDir     string
	ProfileSeconds int
}

type unpackBench struct {
	opts   unpackOpts
	s      *scenario.Session
	base   scenario.BaseImage
	dir    string
	env    []string // the daemons' environment: decompressor and shims
	shims  string
	cells  map[string]map[string][]unpackRun // case -> column key -> runs
	errs   map[string]map[string][]string
	docker *scenario.Dockerd
	image  string
	// imageDecomp: the decompressors the rootless image has, name -> path
	imageDecomp map[string]string
	layers      layerIndex
	started     time.Time
	load        [2]string
}

func benchUnpack(ctx context.Context, opts unpackOpts) error {
	tools, err := scenario.FindTools(opts.Repo)
	if err != nil {
		return err
	}
	if tools.Wrapper == "" {
		return errors.Errorf("no %s in %s: the unpack rows run through the daemonless wrapper", scenario.WrapperPath, opts.Repo)
	}
	s, err := scenario.NewSession(ctx, tools, opts.WorkDir, "lazylocal-unpack")
	if err != nil {
		return err
	}
	defer s.Close()
	b := &unpackBench{opts: opts, s: s, started: time.Now(),
		cells: map[string]map[string][]unpackRun{}, errs: map[string]map[string][]string{}}
	b.load[0] = scenario.LoadAvg()
	for _, d := range opts.Daemons {
		s.Logf("daemon %-8s %s (%s)", d.Name, d.Version, d.Buildkitd)
	}
	if b.env, err = scenario.GunzipEnv(opts.Gunzip); err != nil {
		return err
	}
	if b.dir, err = s.Mkdir("unpack"); err != nil {
		return err
	}
	// Shims for the decompressors this machine has, on the daemons' PATH:
	// they record each run's CPU time. The one -gunzip names must exist.
	real := map[string]string{}
	for _, d := range scenario.Decompressors {
		if p, err := exec.LookPath(d.Name); err == nil {
			real[d.Name], _ = filepath.Abs(p)
		}
	}
	if _, ok := real[opts.Gunzip]; !ok && opts.Gunzip != "go" {
		return errors.Errorf("-gunzip %s: no %s in PATH: run hack/install-deps bench (Debian's isal and pigz)", opts.Gunzip, opts.Gunzip)
	}
	b.shims = filepath.Join(b.dir, "shims")
	if err := scenario.WriteDecompressorShims(b.shims, real); err != nil {
		return err
	}
	b.env = append(b.env, "PATH="+b.shims+":"+os.Getenv("PATH"))

	b.base, err = scenario.MakeBase(ctx, tools, s.Registry, s.Config, s.Dir, fmt.Sprintf("base-%dmb", opts.Sizes[0]), int64(opts.Sizes[0])*scenario.MB, s.Logf)
	if err != nil {
		return err
	}
	if err := b.indexBase(ctx); err != nil {
		return err
	}
	for _, c := range opts.Cases {
		if c.Rootless {
			if err := b.startDocker(ctx); err != nil {
				return err
			}
			defer b.docker.Stop()
			break
		}
	}
	return b.run(ctx)
}

// project is the build context of a case, and its pristine cache.
type project struct {
	dir      string
	pristine string
}

func (b *unpackBench) writeProject(c unpackCase) (*project, error) {
	name := "report"
	if !c.Report {
		name = "run"
	}
	if c.Cache != "" && c.Cache != "gzip" {
		name += "-zstd"
	}
	p := &project{dir: filepath.Join(b.dir, "context-"+name)}
	if c.Cache != "" {
		p.pristine = filepath.Join(b.dir, "cache-"+name)
	}
	if _, err := os.Stat(p.dir); err == nil {
		return p, nil // rootless shares the rootful row's
	}
	var err error
	if c.Report {
		_, err = scenario.WriteProject(p.dir, b.base.Ref, false)
	} else {
		err = scenario.WriteFiles(p.dir, map[string]string{"Dockerfile": runDockerfile(b.base.Ref)})
	}
	if err != nil {
		return nil, err
	}
	if c.Cache == "" {
		return p, nil
	}
	b.s.Logf("%s: build 1 (ours, fresh daemon), exporting --export-cache %s", c.Name, c.exportCache("DIR"))
	args := b.buildArgs(c, p, 0, c.exportCache(p.pristine), "")
	r, err := b.s.Daemonless.Build(context.Background(), filepath.Join(b.dir, "build1-root"), args, filepath.Join(b.dir, "build1-"+name+".log"))
	scenario.RemoveAll(filepath.Join(b.dir, "build1-root"))
	if err != nil {
		return nil, err
	}
	b.s.Logf("%s: build 1 took %.2fs", c.Name, r.Build.Seconds())
	return p, b.indexCache(p.pristine)
}

// runDockerfile is a cold build's: the base, and one step that runs on it.
func runDockerfile(baseRef string) string {
	return fmt.Sprintf("FROM %s\nARG REV=0\nRUN echo \"revision $REV\" >/revision && ls /opt/base >/layers\n", baseRef)
}

// buildArgs are buildctl's arguments for build rev of case c (--opt
// build-arg:REV for a RUN case; the report's case changes a file instead).
func (b *unpackBench) buildArgs(c unpackCase, p *project, rev int, export, imp string) []string {
	args := []string{"build", "--progress=rawjson", "--frontend=dockerfile.v0",
		"--local", "context=" + p.dir, "--local", "dockerfile=" + p.dir}
	if !c.Report {
		args = append(args, "--opt", fmt.Sprintf("build-arg:REV=%d", rev))
	}
	if export != "" {
		args = append(args, "--export-cache", export)
	}
	if imp != "" {
		args = append(args, "--import-cache", imp)
	}
	return args
}

func (b *unpackBench) run(ctx context.Context) error {
	projects := map[string]*project{}
	for _, c := range b.opts.Cases {
		p, err := b.writeProject(c)
		if err != nil {
			return errors.Wrapf(err, "row %s", c.Name)
		}
		projects[c.Name] = p
	}
	for k := 1; k <= b.opts.Runs; k++ {
		for _, c := range b.opts.Cases {
			p := projects[c.Name]
			if c.Report {
				if err := (&scenario.Project{Dir: p.dir}).SetRevision(k); err != nil {
					return err
				}
			}
			cols := unpackColumns(c, b.opts.Daemons)
			for i := range cols {
				col := cols[(i+k-1)%len(cols)]
				r, err := b.runOne(ctx, c, p, col, k)
				if err != nil {
					if ctx.Err() != nil {
						return ctx.Err()
					}
					b.addErr(c.Name, col.key(), err.Error())
					b.s.Logf("run %d/%d %s %s: FAILED: %v", k, b.opts.Runs, c.Name, col.key(), err)
					continue
				}
				b.add(c.Name, col.key(), r)
				b.s.Logf("run %d/%d %-8s %-15s build %6.2fs, %2d layers extracted (busy %5.2fs, Σ %5.2fs, largest %5.2fs), CPU %5.2fs daemon + %5.2fs children (%5.2fs decompressors, %d runs), %5.0f MB written",
					k, b.opts.Runs, c.Name, col.key(), r.Build.Seconds(), len(r.Extracted.Layers),
					r.Extracted.Busy().Seconds(), r.Extracted.Sum().Seconds(), r.Extracted.Largest().Seconds(),
					r.Usage.CPU.Seconds(), r.Usage.ChildCPU.Seconds(), r.decompCPU().Seconds(), len(r.Decomp),
					float64(r.Usage.WriteBytes)/scenario.MB)
			}
		}
		if b.opts.WriteMD {
			if err := b.write(); err != nil {
				return err
			}
		}
	}
	b.load[1] = scenario.LoadAvg()
	fmt.Println()
	fmt.Print(b.text())
	if b.opts.WriteMD {
		if err := b.write(); err != nil {
			return err
		}
		b.s.Logf("wrote %s", b.opts.MD)
	}
	return nil
}

func (b *unpackBench) add(c, col string, r unpackRun) {
	if b.cells[c] == nil {
		b.cells[c] = map[string][]unpackRun{}
	}
	b.cells[c][col] = append(b.cells[c][col], r)
}

func (b *unpackBench) addErr(c, col, e string) {
	if b.errs[c] == nil {
		b.errs[c] = map[string][]string{}
	}
	b.errs[c][col] = append(b.errs[c][col], e)
}

// runOne runs build 2 of case c once, the way col says, on a fresh daemon.
func (b *unpackBench) runOne(ctx context.Context, c unpackCase, p *project, col unpackCol, k int) (unpackRun, error) {
	runDir := filepath.Join(b.dir, "run")
	if err := os.MkdirAll(runDir, 0o755); err != nil {
		return unpackRun{}, errors.WithStack(err)
	}
	defer scenario.RemoveAll(runDir)
	logPath := filepath.Join(b.dir, fmt.Sprintf("%s-%s-%d.log", c.Name, strings.ReplaceAll(col.key(), "/", "-"), k))
	cacheDir := filepath.Join(runDir, "cache")
	decomp := filepath.Join(runDir, "decompressors")
	if err := os.MkdirAll(decomp, 0o777); err != nil {
		return unpackRun{}, errors.WithStack(err)
	}
	var export, imp string
	if c.Cache != "" {
		if err := scenario.CloneCache(p.pristine, cacheDir); err != nil {
			return unpackRun{}, err
		}
		export, imp = c.exportCache(cacheDir), "type=local,src="+cacheDir
		if col.Lazy {
			imp += ",lazy=true"
		}
	}
	var (
		res scenario.Result
		err error
	)
	if c.Rootless {
		res, err = b.runRootless(ctx, p, col, runDir, cacheDir, decomp, logPath, col.Lazy)
	} else {
		d := *b.s.Daemonless
		d.Tools.Buildkitd, d.Tools.Buildctl = col.D.Buildkitd, col.D.Buildctl
		d.Env = append(append([]string{}, b.env...), "SCENARIO_DECOMPRESSORS="+decomp)
		var prof *profiler
		if b.opts.ProfileDir != "" {
			file := filepath.Join(b.opts.ProfileDir, fmt.Sprintf("%s-%s-%d.pprof", c.Name, strings.ReplaceAll(col.key(), "/", "-"), k))
			if prof, err = startProfiler(ctx, file, b.opts.ProfileSeconds); err != nil {
				return unpackRun{}, err
			}
			d.Flags = []string{prof.flag()}
		}
		res, err = d.Build(ctx, filepath.Join(runDir, "root"), b.buildArgs(c, p, k, export, imp), logPath)
		if prof != nil {
			if perr := prof.wait(); perr != nil {
				b.s.Logf("%s %s: no profile: %v", c.Name, col.key(), perr)
			}
		}
	}
	if err != nil {
		return unpackRun{}, err
	}
	r := unpackRun{Result: res}
	f, err := os.Open(logPath)
	if err != nil {
		return r, errors.WithStack(err)
	}
	defer f.Close()
	if r.Extracted, err = scenario.ParseRawProgress(f); err != nil {
		return r, errors.Wrapf(err, "%s", logPath)
	}
	if r.Decomp, err = scenario.ReadDecompressorRuns(decomp); err != nil {
		return r, err
	}
	for _, d := range r.Decomp {
		if d.ExitCode != 0 {
			return r, errors.Errorf("%s exited %d during the build; see %s", d.Tool, d.ExitCode, logPath)
		}
	}
	return r, nil
}

func cores() int { return runtime.NumCPU() }

// newUnpackOpts checks the unpack benchmark's flags and finds its daemons.
func newUnpackOpts(o options, cases, gunzip, baselineBin, upstreamBin string, mdGiven bool, profileDir string, profileSecs int) (unpackOpts, error) {
	uo := unpackOpts{options: o, Gunzip: gunzip, WriteMD: mdGiven, ProfileSeconds: profileSecs}
	var err error
	if profileDir != "" {
		if profileSecs < 1 {
			return uo, errors.Errorf("-profile-seconds %d: want at least 1", profileSecs)
		}
		if uo.ProfileDir, err = filepath.Abs(profileDir); err != nil {
			return uo, errors.WithStack(err)
		}
	}
	if uo.Cases, err = parseUnpackCases(cases); err != nil {
		return uo, err
	}
	if _, err := scenario.GunzipEnv(gunzip); err != nil {
		return uo, errors.Wrap(err, "-gunzip")
	}
	if baselineBin == "" {
		baselineBin = filepath.Join(o.Repo, "bin", "baseline")
	}
	if upstreamBin == "" {
		upstreamBin = filepath.Join(o.Repo, "bin", "upstream")
	}
	for _, d := range []struct {
		name, dir string
		lazy      bool
	}{
		{"ours", filepath.Join(o.Repo, "bin"), true},
		{"baseline", baselineBin, true},
		{"upstream", upstreamBin, false},
	} {
		dir, err := filepath.Abs(d.dir)
		if err != nil {
			return uo, errors.WithStack(err)
		}
		dm, err := findDaemonDir(d.name, dir, d.lazy)
		if err != nil {
			return uo, err
		}
		uo.Daemons = append(uo.Daemons, dm)
	}
	return uo, nil
}
