// Command demo runs the rebuild of moby/buildkit#6572 end to end on this
// machine: a loopback registry, a generated base image, and for each case
// two builds through buildctl-daemonless.sh, each with a fresh buildkitd,
// importing and exporting a local cache directory eagerly or with
// lazy=true. It prints one table comparing the second builds.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/lazylocal/buildkit/hack/bench/mdtable"
	"github.com/lazylocal/buildkit/hack/bench/scenario"
	"github.com/pkg/errors"
)

func main() {
	sizeMB := flag.Int("size", 350, "compressed size of the generated base image, in MB")
	workDir := flag.String("workdir", os.TempDir(), "parent of the demo's temporary directory")
	repo := flag.String("repo", "", "repository root, holding bin/ and daemonless/ (default: the nearest directory at or above the working directory holding Makefile and .git)")
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
	if err := run(ctx, root, *workDir, int64(*sizeMB)*scenario.MB); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

type modeResult struct {
	eager, lazy scenario.Result
}

func run(ctx context.Context, repo, workDir string, size int64) error {
	tools, err := scenario.FindTools(repo)
	if err != nil {
		return err
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
	for i, c := range cases {
		for _, lazy := range []bool{false, true} {
			res, err := rebuild(ctx, s, base, c, lazy)
			if err != nil {
				return errors.Wrapf(err, "case %q", c.Name)
			}
			if lazy {
				results[i].lazy = res
			} else {
				results[i].eager = res
			}
		}
	}

	tb := mdtable.Table{Header: []string{
		"case", "build 2 eager", "build 2 lazy", "lazy/eager",
		"extracting lines eager", "lazy",
		"MB under --root eager", "lazy",
		"wrapper total eager", "lazy",
	}}
	for i, c := range cases {
		e, l := results[i].eager, results[i].lazy
		tb.AddRow(c.Title,
			secs(e.Build), secs(l.Build), fmt.Sprintf("%.3f", l.Build.Seconds()/e.Build.Seconds()),
			fmt.Sprint(e.Extract.Lines), fmt.Sprint(l.Extract.Lines),
			mb(e.RootBytes), mb(l.RootBytes),
			secs(e.Total), secs(l.Total))
	}
	fmt.Printf("\nBuild 2 of each case, fresh buildkitd per build via %s\n", s.Daemonless.Mode())
	fmt.Printf("base image %s: %d layers, %d MB compressed, %d MB uncompressed\n",
		base.Ref, base.Layers, base.Compressed/scenario.MB, base.Uncompressed/scenario.MB)
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
func rebuild(ctx context.Context, s *scenario.Session, base scenario.BaseImage, c scenario.Case, lazy bool) (scenario.Result, error) {
	mode := "eager"
	if lazy {
		mode = "lazy"
	}
	dir, err := s.Mkdir(c.Name + "-" + mode)
	if err != nil {
		return scenario.Result{}, err
	}
	proj, err := scenario.WriteProject(filepath.Join(dir, "context"), base.Ref, c.Link)
	if err != nil {
		return scenario.Result{}, err
	}
	cache := scenario.LocalCache(filepath.Join(dir, "cache"), lazy)
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
		res, err = s.Daemonless.Build(ctx, root, proj.Args(cache, ""), filepath.Join(dir, fmt.Sprintf("build%d.log", build)))
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

func mb(b int64) string { return fmt.Sprintf("%.0f", float64(b)/scenario.MB) }
