package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
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

// remoteCases are build 2 of the remote row: all cached, and the report's
// Dockerfile (its plain COPY . ./ changed, which mounts the base).
var remoteCases = []string{"cached", "report"}

// remoteRun is what one build 2 through the link measured.
type remoteRun struct {
	Build    time.Duration
	Up, Down int64 // bytes client to daemon, daemon to client
	Extract  int   // extracting lines
}

// benchRemote runs build 2 of remoteCases, eager and lazy, each on a fresh
// buildkitd on TCP with TLS that buildctl reaches through a proxy limited
// to rateMB MB/s each way, and prints a Markdown table per size. It
// writes no report: the table goes into docs/benchmarks.md by hand, with
// the command that made it.
func benchRemote(ctx context.Context, opts options, rateMB float64) error {
	tools, err := scenario.FindTools(opts.Repo)
	if err != nil {
		return err
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
	var out strings.Builder
	fmt.Fprintf(&out, "remote builder: buildctl -> proxy (%.0f MB/s = %.0f Mbit/s each way) -> buildkitd on tcp://127.0.0.1 with TLS, fresh per build; median of %d runs\n\n",
		rateMB, rateMB*8, opts.Runs)
	for _, size := range opts.Sizes {
		tbl, err := benchRemoteSize(ctx, s, opts, certs, size, rateMB)
		if err != nil {
			return errors.Wrapf(err, "size %d MB", size)
		}
		out.WriteString(tbl)
		out.WriteString("\n")
	}
	fmt.Println()
	fmt.Print(out.String())
	return nil
}

func benchRemoteSize(ctx context.Context, s *scenario.Session, opts options, certs tlsfiles.Files, sizeMB int, rateMB float64) (string, error) {
	base, err := scenario.MakeBase(ctx, s.Tools, s.Registry, s.Config, s.Dir, fmt.Sprintf("base-%dmb", sizeMB), int64(sizeMB)*scenario.MB, s.Logf)
	if err != nil {
		return "", err
	}
	dir, err := s.Mkdir(fmt.Sprintf("remote-%d", sizeMB))
	if err != nil {
		return "", err
	}
	defer scenario.RemoveAll(dir)
	proj, err := scenario.WriteProject(filepath.Join(dir, "context"), base.Ref, false)
	if err != nil {
		return "", err
	}
	pristine := filepath.Join(dir, "cache")

	// Build 1 on a local daemon: the cache directory the client keeps.
	runDir := filepath.Join(dir, "build1-run")
	if err := os.MkdirAll(runDir, 0o755); err != nil {
		return "", errors.WithStack(err)
	}
	warm, err := scenario.StartDaemon(ctx, s.Tools, filepath.Join(dir, "build1-root"), s.Config, runDir)
	if err != nil {
		return "", err
	}
	s.Logf("%d MB: build 1, exporting the local cache", sizeMB)
	err = buildctlLogged(ctx, warm, filepath.Join(dir, "build1.log"), proj.Args(scenario.Cache{Export: scenario.LocalCache(pristine, false).Export}, ""))
	warm.Stop()
	if err != nil {
		return "", err
	}

	runs := map[string]map[string][]remoteRun{}
	cols := []string{"eager", "lazy"}
	for k := 1; k <= opts.Runs; k++ {
		for _, name := range remoteCases {
			c, err := scenario.CaseByName(name)
			if err != nil {
				return "", err
			}
			rev := 0
			if c.Change {
				rev = k
			}
			if err := proj.SetRevision(rev); err != nil {
				return "", err
			}
			for i := range cols {
				col := cols[(i+k-1)%len(cols)]
				r, err := remoteBuild(ctx, s, dir, certs, proj, pristine, c, col == "lazy", rateMB, fmt.Sprintf("%s-%s-%d", name, col, k))
				if err != nil {
					return "", errors.Wrapf(err, "%s, %s", name, col)
				}
				if runs[name] == nil {
					runs[name] = map[string][]remoteRun{}
				}
				runs[name][col] = append(runs[name][col], r)
				s.Logf("%d MB run %d/%d %-6s %-5s build %6.2fs, %7.1f MB client->daemon, %6.1f MB daemon->client, %2d extracting lines",
					sizeMB, k, opts.Runs, name, col, r.Build.Seconds(), float64(r.Up)/scenario.MB, float64(r.Down)/scenario.MB, r.Extract)
			}
		}
	}

	tbl := mdtable.Table{Header: []string{fmt.Sprintf("~%d MB base (%d MB compressed, %d layers)", sizeMB, base.Compressed/scenario.MB, base.Layers), "eager import", "`lazy=true`", "lazy/eager time"}}
	for _, name := range remoteCases {
		c, _ := scenario.CaseByName(name)
		row := []string{c.Title}
		med := map[string]float64{}
		for _, col := range cols {
			rs := runs[name][col]
			var t, up, down, ex stats.Sample
			for _, r := range rs {
				t = append(t, r.Build.Seconds())
				up = append(up, float64(r.Up))
				down = append(down, float64(r.Down))
				ex = append(ex, float64(r.Extract))
			}
			med[col] = t.Median()
			row = append(row, fmt.Sprintf("%s (%s–%s)<br>%s client→daemon, %s daemon→client · %.0f extracting",
				secs(t.Median()), secs(t.Min()), secs(t.Max()), bytesHuman(up.Median()), bytesHuman(down.Median()), ex.Median()))
		}
		row = append(row, fmt.Sprintf("%.3f", stats.Ratio(med["lazy"], med["eager"])))
		tbl.AddRow(row...)
	}
	return tbl.Markdown(), nil
}

// remoteBuild runs build 2 once: the pristine cache cloned as a CI job
// restores it, a fresh TLS daemon, the proxy in front of it.
func remoteBuild(ctx context.Context, s *scenario.Session, dir string, certs tlsfiles.Files, proj *scenario.Project, pristine string, c scenario.Case, lazy bool, rateMB float64, name string) (remoteRun, error) {
	runDir := filepath.Join(dir, "run")
	if err := os.MkdirAll(runDir, 0o755); err != nil {
		return remoteRun{}, errors.WithStack(err)
	}
	defer scenario.RemoveAll(runDir)
	cacheDir := filepath.Join(runDir, "cache")
	if err := scenario.CloneCache(pristine, cacheDir); err != nil {
		return remoteRun{}, err
	}
	d, err := scenario.StartTCPDaemon(ctx, s.Tools, filepath.Join(runDir, "root"), s.Config, runDir, certs)
	if err != nil {
		return remoteRun{}, err
	}
	defer d.Stop()
	p, err := linkproxy.Start(d.HostPort(), rateMB*scenario.MB)
	if err != nil {
		return remoteRun{}, err
	}
	defer p.Close()

	logPath := filepath.Join(dir, name+".log")
	logf, err := os.OpenFile(logPath, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return remoteRun{}, errors.WithStack(err)
	}
	defer logf.Close()
	start := time.Now()
	err = d.BuildctlVia(ctx, "tcp://"+p.Addr(), logf, proj.Args(c.LocalCache(cacheDir, lazy), "")...)
	r := remoteRun{Build: time.Since(start)}
	r.Up, r.Down = p.Bytes()
	if err != nil {
		return r, errors.Wrapf(err, "output in %s", logPath)
	}
	if _, err := logf.Seek(0, 0); err != nil {
		return r, errors.WithStack(err)
	}
	ex, err := scenario.CountExtractions(logf)
	r.Extract = ex.Lines
	return r, err
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
