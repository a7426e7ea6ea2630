// Command stress runs rounds of concurrent builds on two buildkitd daemons
// that all import one local cache directory with lazy=true, while some of
// them export into it with reset=true and others rotate it as GitHub
// Actions documents (export to DIR-new, rm -rf DIR, mv DIR-new DIR). Every
// build must either succeed with the files it computed or fail with one of
// the errors the project documents. A hang, gRPC's "the client connection
// is closing", a wrong file or a buildkitd that exits fails the run.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/lazylocal/buildkit/hack/bench/scenario"
	"github.com/pkg/errors"
)

func main() {
	builds := flag.Int("builds", 6, "concurrent builds per round, spread over two daemons (at least 6)")
	rounds := flag.Int("rounds", 5, "rounds of concurrent builds")
	sizeMB := flag.Int("size", 4, "compressed size of the generated base image, in MB")
	timeout := flag.Duration("timeout", 3*time.Minute, "time one build may take before it counts as a hang")
	stagger := flag.Duration("stagger", 400*time.Millisecond, "delay between the starts of a round's builds")
	workDir := flag.String("workdir", os.TempDir(), "parent of the run's temporary directory")
	repo := flag.String("repo", "", "repository root, holding bin/ (default: the nearest directory at or above the working directory holding Makefile and .git)")
	lazy := flag.Bool("lazy", true, "import with lazy=true; -lazy=false runs the same rounds with upstream's eager import, for comparison")
	soak := flag.Duration("soak", 0, "instead of rounds, run lazy builds back to back for this long while another build exports with reset=true every -reset-every, and print the directory's size after each reset")
	resetEvery := flag.Duration("reset-every", 10*time.Second, "with -soak, the time between two resets")
	keep := flag.Bool("keep", false, "keep the work directory (logs, cache directory) after a run that passed; a failed run always keeps it")
	flag.Parse()

	if *builds < 6 || *rounds < 1 {
		fmt.Fprintln(os.Stderr, "stress: -builds must be at least 6 and -rounds at least 1")
		os.Exit(2)
	}
	root := *repo
	if root == "" {
		var err error
		if root, err = scenario.FindRepoRoot("."); err != nil {
			fmt.Fprintln(os.Stderr, "stress:", err)
			os.Exit(2)
		}
	}
	ctx, stop := scenario.SignalContext(context.Background())
	defer stop()
	cfg := config{
		builds: *builds, rounds: *rounds, size: int64(*sizeMB) * scenario.MB,
		timeout: *timeout, stagger: *stagger, lazy: *lazy, keep: *keep,
		soak: *soak, resetEvery: *resetEvery,
	}
	if err := run(ctx, root, *workDir, cfg); err != nil {
		fmt.Fprintln(os.Stderr, "stress:", err)
		os.Exit(1)
	}
}

type config struct {
	builds, rounds int
	size           int64
	timeout        time.Duration
	stagger        time.Duration
	lazy           bool
	keep           bool
	soak           time.Duration
	resetEvery     time.Duration
}

// role is what a build does with the shared directory besides importing
// it lazily.
type role int

const (
	roleReset  role = iota // --export-cache dest=DIR,mode=max,reset=true
	roleRotate             // --export-cache dest=DIR-new-<k>,mode=max, then rm -rf DIR && mv DIR-new-<k> DIR
	roleImport             // no export
)

func (r role) String() string {
	return [...]string{"reset", "rotate", "import"}[r]
}

// job is one build of a round and how it ended.
type job struct {
	round, index int
	daemon       int
	role         role
	variants     []int  // the common stages the build copies from
	noise        int    // bytes of random data its job stage adds (soak resets)
	dir          string // context/, out/, build.log

	kind     Kind
	err      string // buildctl's error text, or why the outcome is a bug
	took     time.Duration
	skipped  bool   // a reset that found the directory in use
	rotation string // "" (no rotation), "ok", or why rm/mv failed
}

func (j *job) log() string { return filepath.Join(j.dir, "build.log") }

func (j *job) name() string {
	return fmt.Sprintf("round %d build %d (daemon %d, %s)", j.round, j.index, j.daemon, j.role)
}

type runner struct {
	cfg     config
	s       *scenario.Session
	base    scenario.BaseImage
	want    map[string]string // sha256 of every regular file of the base, by path
	daemons [2]*scenario.Daemon
	cache   string
	prune   *os.File
	start   time.Time // the clock of the logs' timestamps
}

func run(ctx context.Context, repo, workDir string, cfg config) (err error) {
	start := time.Now()
	tools, err := scenario.FindTools(repo)
	if err != nil {
		return err
	}
	s, err := scenario.NewSession(ctx, tools, workDir, "lazylocal-stress")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil || cfg.keep {
			s.Keep()
		}
		s.Close()
	}()
	r := &runner{cfg: cfg, s: s, cache: filepath.Join(s.Dir, "cache"), start: start}
	if r.base, err = scenario.MakeBase(ctx, tools, s.Registry, s.Config, s.Dir, "base", cfg.size, s.Logf); err != nil {
		return err
	}
	if r.want, err = hashFiles(r.base.Files); err != nil {
		return err
	}
	if r.prune, err = os.Create(filepath.Join(s.Dir, "prune.log")); err != nil {
		return errors.WithStack(err)
	}
	defer r.prune.Close()
	for i := range r.daemons {
		dir, err := s.Mkdir(fmt.Sprintf("daemon%d", i))
		if err != nil {
			return err
		}
		d, err := scenario.StartDaemon(ctx, tools, filepath.Join(dir, "root"), s.Config, dir)
		if err != nil {
			return err
		}
		defer d.Stop()
		r.daemons[i] = d
		s.Logf("buildkitd %d: %s, log %s", i, d.Addr, d.Log())
	}

	// The seed: the directory every round imports, with the base's
	// layers and the step all builds share.
	seed := &job{round: 0, index: 0, daemon: 0, role: roleReset, variants: []int{0, 1}, dir: filepath.Join(s.Dir, "round0", "build0")}
	r.build(ctx, seed, "")
	if seed.kind != KindOK {
		return errors.Errorf("seed build failed (%s): %s; log %s", seed.kind, seed.err, seed.log())
	}
	s.Logf("seeded %s in %s", r.cache, seed.took.Round(time.Millisecond))
	if cfg.soak > 0 {
		bad, err := r.soak(ctx)
		if err != nil {
			return err
		}
		if bad > 0 {
			return errors.Errorf("%d builds ended in a way the project does not document; logs kept under %s", bad, s.Dir)
		}
		return nil
	}

	var all [][]*job
	var runErr error
	for round := 1; round <= cfg.rounds; round++ {
		if err := r.pruneAll(ctx); err != nil {
			return err
		}
		jobs, err := r.round(ctx, round)
		all = append(all, jobs)
		if err != nil {
			runErr = err
			break
		}
	}
	fmt.Println()
	fmt.Printf("%d rounds of %d builds on 2 daemons importing %s (%s); base %s: %d layers, %.1f MB compressed, %d files checked per output\n",
		len(all), cfg.builds, r.cache, r.importAttrs(), r.base.Ref, r.base.Layers, float64(r.base.Compressed)/scenario.MB, len(r.want))
	fmt.Println()
	fmt.Print(summary(all).Text())
	fmt.Printf("\nwall time %s (setup included)\n", time.Since(start).Round(100*time.Millisecond))
	bad := 0
	for _, jobs := range all {
		for _, j := range jobs {
			if j.rotation != "" && j.rotation != "ok" {
				// What a CI job's rotation step would fail with: the
				// users' race, not the build's.
				fmt.Printf("rotation failed after %s: %s\n", j.name(), j.rotation)
			}
			if !j.kind.Expected() {
				bad++
				fmt.Fprintf(os.Stderr, "UNEXPECTED %s: %s: %s\n  build log: %s\n  daemon log: %s\n",
					j.name(), j.kind, j.err, j.log(), r.daemons[j.daemon].Log())
			}
		}
	}
	if runErr != nil {
		return runErr
	}
	if bad > 0 {
		return errors.Errorf("%d builds ended in a way the project does not document; logs kept under %s", bad, s.Dir)
	}
	fmt.Println("every build succeeded with the expected files or failed with a documented error")
	return nil
}

// pruneAll empties both daemons' build caches, so that every round imports
// the directory into daemons that hold none of its layers.
func (r *runner) pruneAll(ctx context.Context) error {
	for i, d := range r.daemons {
		if err := d.Buildctl(ctx, r.prune, "prune", "--all"); err != nil {
			return errors.Wrapf(err, "buildkitd %d; log %s", i, r.prune.Name())
		}
	}
	return nil
}

// round runs cfg.builds builds at once, started cfg.stagger apart, and
// checks afterwards that both daemons are still running.
func (r *runner) round(ctx context.Context, n int) ([]*job, error) {
	jobs := make([]*job, r.cfg.builds)
	var wg sync.WaitGroup
	for k := range jobs {
		j := &job{
			round: n, index: k, daemon: k % 2, role: role(k % 3), variants: []int{(k / 3) % 2},
			dir: filepath.Join(r.s.Dir, fmt.Sprintf("round%d", n), fmt.Sprintf("build%d", k)),
		}
		jobs[k] = j
		wg.Go(func() {
			select {
			case <-time.After(time.Duration(k) * r.cfg.stagger):
			case <-ctx.Done():
			}
			r.build(ctx, j, r.importAttrs())
		})
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return jobs, err
	}
	var crashed []string
	for i, d := range r.daemons {
		exited, err := d.Exited()
		if !exited {
			continue
		}
		crashed = append(crashed, fmt.Sprintf("buildkitd %d exited (%v); log %s", i, err, d.Log()))
		for _, j := range jobs {
			if j.daemon == i && j.kind != KindOK {
				j.err = fmt.Sprintf("buildkitd exited (%v) during the round; buildctl said: %s", err, j.err)
				j.kind = KindDaemonExited
			}
		}
	}
	counts := map[Kind]int{}
	for _, j := range jobs {
		counts[j.kind]++
	}
	var parts []string
	for _, k := range Kinds {
		if counts[k] > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", k, counts[k]))
		}
	}
	if nested, _ := filepath.Glob(filepath.Join(r.cache, filepath.Base(r.cache)+"-new-*")); len(nested) > 0 {
		// mv DIR-new DIR when DIR exists (made again by a build that
		// attached it, or another rotation) moves DIR-new into it.
		parts = append(parts, fmt.Sprintf("%d DIR-new moved inside DIR by mv", len(nested)))
	}
	r.s.Logf("round %d: %s", n, strings.Join(parts, ", "))
	if len(crashed) > 0 {
		return jobs, errors.New(strings.Join(crashed, "; "))
	}
	return jobs, nil
}

// importAttrs is the --import-cache value of every build after the seed.
func (r *runner) importAttrs() string {
	attrs := "type=local,src=" + r.cache
	if r.cfg.lazy {
		attrs += ",lazy=true"
	}
	return attrs
}

// build runs one job, importing the cache with importAttrs (the seed has
// nothing to import), and classifies how it ended.
func (r *runner) build(ctx context.Context, j *job, importAttrs string) {
	if err := r.runBuild(ctx, j, importAttrs); err != nil {
		j.kind, j.err = KindOther, err.Error()
	}
}

func (r *runner) runBuild(ctx context.Context, j *job, importAttrs string) error {
	ctxDir, out := filepath.Join(j.dir, "context"), filepath.Join(j.dir, "out")
	if err := scenario.WriteFiles(ctxDir, map[string]string{"Dockerfile": dockerfile(r.base.Ref, j)}); err != nil {
		return err
	}
	cache := scenario.Cache{Import: importAttrs}
	newDir := fmt.Sprintf("%s-new-%d", r.cache, j.index)
	switch j.role {
	case roleReset:
		cache.Export = "type=local,dest=" + r.cache + ",mode=max,reset=true"
	case roleRotate:
		// As a runner that starts clean: no DIR-new left from a round
		// whose rotation failed.
		if err := os.RemoveAll(newDir); err != nil {
			return errors.WithStack(err)
		}
		cache.Export = "type=local,dest=" + newDir + ",mode=max"
	}
	logf, err := os.Create(j.log())
	if err != nil {
		return errors.WithStack(err)
	}
	defer logf.Close()
	stamped, wait, err := stampedWriter(logf, r.start)
	if err != nil {
		return err
	}
	p := &scenario.Project{Dir: ctxDir}
	bctx, cancel := context.WithTimeout(ctx, r.cfg.timeout)
	defer cancel()
	start := time.Now()
	fmt.Fprintf(stamped, "buildctl %s\n", strings.Join(p.Args(cache, "type=local,dest="+out), " "))
	berr := r.daemons[j.daemon].Buildctl(bctx, stamped, p.Args(cache, "type=local,dest="+out)...)
	j.took = time.Since(start)
	if j.role == roleRotate && berr == nil && bctx.Err() == nil {
		// right after the build, as a CI job's next step
		j.rotation = rotate(ctx, r.cache, newDir, stamped)
	}
	wait()
	b, err := os.ReadFile(j.log())
	if err != nil {
		return errors.WithStack(err)
	}
	log := unstamp(string(b))
	j.skipped = strings.Contains(log, "cache store is in use, skipping cleanup")
	switch {
	case ctx.Err() != nil:
		return ctx.Err()
	case bctx.Err() != nil:
		j.kind, j.err = KindTimeout, fmt.Sprintf("no result after %s: a hang", r.cfg.timeout)
		return nil
	case berr != nil:
		j.err = ErrorText(log)
		exportDir := ""
		if j.role == roleReset {
			exportDir = r.cache
		}
		j.kind = Classify(j.err, exportDir)
		if j.err == "" {
			j.err = berr.Error()
		}
		return nil
	}
	if err := checkOutput(out, j, r.want); err != nil {
		j.kind, j.err = KindWrongOutput, err.Error()
		return nil
	}
	j.kind = KindOK
	return nil
}

// rotate replaces dir by newDir the way GitHub Actions' cache example for
// the local cache does, and says "ok" or why it failed.
func rotate(ctx context.Context, dir, newDir string, log *os.File) string {
	cmd := exec.CommandContext(ctx, "sh", "-c", `rm -rf "$1" && mv "$2" "$1"`, "sh", dir, newDir)
	out, err := cmd.CombinedOutput()
	fmt.Fprintf(log, "rotation: rm -rf %s && mv %s %s: %v\n", dir, newDir, dir, err)
	if len(out) > 0 {
		fmt.Fprintf(log, "%s\n", strings.TrimSpace(string(out)))
	}
	if err != nil {
		return fmt.Sprintf("%v: %s", err, strings.TrimSpace(string(out)))
	}
	return "ok"
}

// dockerfile is build j's Dockerfile. Stages common0 and common1 are the
// same in every build, so after the seed they are cached unless the
// directory lost them. The final stage is one of them (the seed's copies
// the other in) with stage job's files added by COPY --link, which does not
// mount its parent: the common stage's layers stay blob-only until the
// local exporter reads the final image, after stage job's RUN, which
// sleeps, so that other builds export and rotate first. A build uses one
// variant, so a rotation by a build of one variant drops the other's layer
// from the directory while builds of the other variant may still have to
// read it. Stage job is new in every build: it mounts the base and reads
// every file of it.
func dockerfile(baseRef string, j *job) string {
	sleep := fmt.Sprintf("%.1f", 0.5+0.5*float64(j.index%6))
	const sums = "find /opt/base /bin/busybox -type f -exec sha256sum {} +"
	var b strings.Builder
	for v := range 2 {
		fmt.Fprintf(&b, "FROM %s AS common%d\nRUN mkdir /out && echo %d > /out/variant && %s > /out/common.sums\n\n", baseRef, v, v, sums)
	}
	noise := ""
	if j.noise > 0 {
		noise = fmt.Sprintf(" && head -c %d /dev/urandom > /out/noise", j.noise)
	}
	fmt.Fprintf(&b, "FROM %s AS job\nRUN mkdir /out && echo \"round %d build %d\" > /out/stamp && %s > /out/job.sums%s && sleep %s\n\n",
		baseRef, j.round, j.index, sums, noise, sleep)
	fmt.Fprintf(&b, "FROM common%d\n", j.variants[0])
	for _, v := range j.variants[1:] {
		fmt.Fprintf(&b, "COPY --link --from=common%d /out/ /common%d/\n", v, v)
	}
	b.WriteString("COPY --link --from=job /out/ /job/\n")
	return b.String()
}
