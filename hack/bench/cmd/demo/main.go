// Command demo runs the rebuild of moby/buildkit#6572 end to end on this
// machine: a loopback registry, a generated base image, and for each case
// two builds through buildctl-daemonless.sh, each with a fresh buildkitd,
// importing and exporting a local cache directory eagerly or with
// lazy=true. Beside them, the eager rebuild on upstream's unchanged
// buildkitd and buildctl at the pin (bin/upstream, make build-others). It
// prints one table comparing the second builds.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/lazylocal/buildkit/hack/bench/mdtable"
	"github.com/lazylocal/buildkit/hack/bench/scenario"
	"github.com/pkg/errors"
)

func main() {
	sizeMB := flag.Int("size", 350, "compressed size of the generated base image, in MB")
	workDir := flag.String("workdir", os.TempDir(), "parent of the demo's temporary directory")
	repo := flag.String("repo", "", "repository root, holding bin/ and daemonless/ (default: the nearest directory at or above the working directory holding Makefile and .git)")
	upstream := flag.String("upstream-bin", "", "directory holding upstream's unchanged buildkitd and buildctl at the pin (default <repo>/bin/upstream, make build-others)")
	flag.Parse()

	root := *repo
	if root == "" {
		var err error
		if root, err = scenario.FindRepoRoot("."); err != nil {
			fmt.Fprintln(os.Stderr, "demo:", err)
			os.Exit(2)
		}
	}
	ctx, stop := scenario.SignalContext(context.Background())
	defer stop()
	if *upstream == "" {
		*upstream = filepath.Join(root, "bin", "upstream")
	}
	if err := run(ctx, root, *workDir, *upstream, int64(*sizeMB)*scenario.MB); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

type modeResult struct {
	eager, lazy, upstream scenario.Result
}

// mode is one way of running the report's two builds.
type mode struct {
	name string
	lazy bool
	// tools: whose buildkitd and buildctl
	tools scenario.Tools
}

func run(ctx context.Context, repo, workDir, upstreamBin string, size int64) error {
	tools, err := scenario.FindTools(repo)
	if err != nil {
		return err
	}
	up := tools
	up.Buildkitd, up.Buildctl = filepath.Join(upstreamBin, "buildkitd"), filepath.Join(upstreamBin, "buildctl")
	for _, p := range []string{up.Buildkitd, up.Buildctl} {
		if _, err := os.Stat(p); err != nil {
			return errors.Wrapf(err, "missing %s: run make build-others", p)
		}
	}
	upVersion, err := exec.CommandContext(ctx, up.Buildkitd, "--version").Output()
	if err != nil {
		return errors.Wrapf(err, "%s --version", up.Buildkitd)
	}
	s, err := scenario.NewSession(ctx, tools, workDir, "lazylocal-demo")
	if err != nil {
		return err
	}
	defer s.Close()

	base, err := scenario.MakeBase(ctx, tools, s.Registry, s.Config, s.Dir, "base", size, s.Logf)
	if err != nil {
		return err
	}

	cases := scenario.Cases[:3]
	results := make([]modeResult, len(cases))
	modes := []mode{{name: "eager", tools: tools}, {name: "lazy", lazy: true, tools: tools}, {name: "upstream", tools: up}}
	for i, c := range cases {
		for _, m := range modes {
			res, err := rebuild(ctx, s, base, c, m)
			if err != nil {
				return errors.Wrapf(err, "case %q", c.Name)
			}
			switch m.name {
			case "eager":
				results[i].eager = res
			case "lazy":
				results[i].lazy = res
			default:
				results[i].upstream = res
			}
		}
	}

	tb := mdtable.Table{Header: []string{
		"case", "build 2 eager", "build 2 lazy", "upstream (eager)", "lazy/eager", "lazy/upstream", "eager/upstream",
		"extracting lines eager", "lazy", "upstream",
		"MB under --root eager", "lazy",
		"wrapper total eager", "lazy",
	}}
	for i, c := range cases {
		e, l, u := results[i].eager, results[i].lazy, results[i].upstream
		tb.AddRow(c.Title,
			secs(e.Build), secs(l.Build), secs(u.Build),
			ratio(l.Build, e.Build), ratio(l.Build, u.Build), ratio(e.Build, u.Build),
			fmt.Sprint(e.Extract.Lines), fmt.Sprint(l.Extract.Lines), fmt.Sprint(u.Extract.Lines),
			mb(e.RootBytes), mb(l.RootBytes),
			secs(e.Total), secs(l.Total))
	}
	fmt.Printf("\nBuild 2 of each case, fresh buildkitd per build via %s\n", s.Daemonless.Mode())
	fmt.Printf("base image %s: %d layers, %d MB compressed, %d MB uncompressed\n",
		base.Ref, base.Layers, base.Compressed/scenario.MB, base.Uncompressed/scenario.MB)
	fmt.Printf("eager, lazy: our bin/buildkitd and bin/buildctl; upstream: %s (%s), eager: it has no lazy import\n", strings.TrimSpace(string(upVersion)), upstreamBin)
	fmt.Println("build 2 = buildctl build alone; wrapper total adds starting and stopping buildkitd;")
	fmt.Println("MB under --root = apparent size of the daemon's --root after the build, like du -sb (it starts empty)")
	fmt.Println()
	fmt.Print(tb.Text())
	fmt.Println()
	return nil
}

// rebuild runs the report's sequence for one case: build 1 on a cold
// daemon, change a source file (if the case does), build 2 on another
// cold daemon, both with the same cache flags.
func rebuild(ctx context.Context, s *scenario.Session, base scenario.BaseImage, c scenario.Case, m mode) (scenario.Result, error) {
	mode := m.name
	d := *s.Daemonless
	d.Tools = m.tools
	dir, err := s.Mkdir(c.Name + "-" + mode)
	if err != nil {
		return scenario.Result{}, err
	}
	proj, err := scenario.WriteProject(filepath.Join(dir, "context"), base.Ref, c.Link)
	if err != nil {
		return scenario.Result{}, err
	}
	cache := scenario.LocalCache(filepath.Join(dir, "cache"), m.lazy)
	var res scenario.Result
	for build := 1; build <= 2; build++ {
		if build == 2 && c.Change {
			if err := proj.SetRevision(1); err != nil {
				return res, err
			}
			s.Logf("%s, %s: changed src/version.txt", c.Name, mode)
		}
		root := filepath.Join(dir, fmt.Sprintf("root%d", build))
		s.Logf("%s, %s: build %d (fresh buildkitd, --root %s)", c.Name, mode, build, root)
		res, err = d.Build(ctx, root, proj.Args(cache, ""), filepath.Join(dir, fmt.Sprintf("build%d.log", build)))
		if err != nil {
			return res, err
		}
		s.Logf("%s, %s: build %d took %s (%s with daemon start/stop), %d extracting lines, %s MB under --root",
			c.Name, mode, build, res.Build.Round(time.Millisecond), res.Total.Round(time.Millisecond), res.Extract.Lines, mb(res.RootBytes))
		if err := scenario.RemoveAll(root); err != nil {
			return res, err
		}
	}
	return res, nil
}

func secs(d time.Duration) string { return fmt.Sprintf("%.2f s", d.Seconds()) }

func ratio(a, b time.Duration) string {
	if b <= 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.3f", a.Seconds()/b.Seconds())
}

func mb(b int64) string { return fmt.Sprintf("%.0f", float64(b)/scenario.MB) }
