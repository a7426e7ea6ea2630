package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/lazylocal/buildkit/hack/bench/mdtable"
	"github.com/lazylocal/buildkit/hack/bench/scenario"
	"github.com/lazylocal/buildkit/hack/bench/stats"
	"github.com/lazylocal/buildkit/hack/remotetest/tlsfiles"
	"github.com/pkg/errors"
)

// clientsRow is the -row name of the benchmark of the export to a new
// directory by client: build 2 of the "newdir" case (all cached, the cache
// exported to DIR-new, as the GitHub Actions guide rotates it) through
// buildctl, stock buildx and our buildx, each on a fresh buildkitd, eager,
// lazy, and the registry cache exported to a new repository (a
// cross-repository mount: no layer moves); then the same export on a
// remote builder through the link proxy, eager and lazy, with the bytes
// each way. It prints its tables and writes no report:
//
//	go run ./cmd/bench -size 350 -row clients
const clientsRow = "clients"

// benchClient is one way a user reaches the daemon.
type benchClient struct {
	Name   string
	buildx string // empty for buildctl
}

// cacheCols are the caches of the clients table.
var cacheCols = []string{"eager", "lazy", "registry"}

func benchClients(ctx context.Context, opts options, rateMB float64) error {
	tools, err := scenario.FindTools(opts.Repo)
	if err != nil {
		return err
	}
	clients := []benchClient{
		{Name: "buildctl"},
		{Name: "stock buildx", buildx: filepath.Join(opts.Repo, "bin", "buildx")},
		{Name: "our buildx", buildx: filepath.Join(opts.Repo, "dist", "docker-buildx")},
	}
	for _, c := range clients[1:] {
		if _, err := os.Stat(c.buildx); err != nil {
			return errors.Wrapf(err, "%s: run make build bin/buildx", c.Name)
		}
	}
	s, err := scenario.NewSession(ctx, tools, opts.WorkDir, "lazylocal-bench-clients")
	if err != nil {
		return err
	}
	defer s.Close()
	var out strings.Builder
	fmt.Fprintf(&out, "export to a new directory after an all-cached build 2, fresh buildkitd per build (%s), median of %d runs (min–max); load average at start %s\n\n",
		tools.Buildkitd, opts.Runs, scenario.LoadAvg())
	for _, size := range opts.Sizes {
		tbl, err := benchClientsSize(ctx, s, opts, clients, size, rateMB)
		if err != nil {
			return errors.Wrapf(err, "size %d MB", size)
		}
		out.WriteString(tbl)
	}
	fmt.Fprintf(&out, "load average at end %s, wall time %s\n", scenario.LoadAvg(), s.Elapsed().Round(time.Second))
	fmt.Println()
	fmt.Print(out.String())
	return nil
}

func benchClientsSize(ctx context.Context, s *scenario.Session, opts options, clients []benchClient, sizeMB int, rateMB float64) (string, error) {
	base, err := scenario.MakeBase(ctx, s.Tools, s.Registry, s.Config, s.Dir, fmt.Sprintf("base-%dmb", sizeMB), int64(sizeMB)*scenario.MB, s.Logf)
	if err != nil {
		return "", err
	}
	dir, err := s.Mkdir(fmt.Sprintf("clients-%d", sizeMB))
	if err != nil {
		return "", err
	}
	defer scenario.RemoveAll(dir)
	proj, err := scenario.WriteProject(filepath.Join(dir, "context"), base.Ref, false)
	if err != nil {
		return "", err
	}
	newdir, err := scenario.CaseByName("newdir")
	if err != nil {
		return "", err
	}
	pristine := filepath.Join(dir, "cache")
	b1 := fmt.Sprintf("%s/cache-%dmb:b1", s.Registry.Addr, sizeMB)
	runDir := filepath.Join(dir, "build1-run")
	if err := os.MkdirAll(runDir, 0o755); err != nil {
		return "", errors.WithStack(err)
	}
	warm, err := scenario.StartDaemon(ctx, s.Tools, filepath.Join(dir, "build1-root"), s.Config, runDir)
	if err != nil {
		return "", err
	}
	s.Logf("%d MB: build 1, exporting the local cache and the registry cache", sizeMB)
	for _, c := range []scenario.Cache{{Export: scenario.LocalCache(pristine, false).Export}, {Export: "type=registry,ref=" + b1 + ",mode=max"}} {
		if err = buildctlLogged(ctx, warm, filepath.Join(dir, "build1.log"), proj.Args(c, "")); err != nil {
			break
		}
	}
	warm.Stop()
	if err != nil {
		return "", err
	}

	times, cpus := map[string]map[string]stats.Sample{}, map[string]map[string]stats.Sample{}
	for k := 1; k <= opts.Runs; k++ {
		for i := range clients {
			c := clients[(i+k-1)%len(clients)]
			for j := range cacheCols {
				col := cacheCols[(j+k-1)%len(cacheCols)]
				cache := newdir.LocalCache(filepath.Join(dir, "run", "cache"), col == "lazy")
				if col == "registry" {
					cache = scenario.RegistryCache(b1, fmt.Sprintf("%s/cache-new-%dmb-%s-%d:newdir", s.Registry.Addr, sizeMB, strings.ReplaceAll(c.Name, " ", "-"), k))
				}
				d, cpu, err := clientBuild(ctx, s, dir, proj, pristine, c, cache, fmt.Sprintf("%s-%s-%d", strings.ReplaceAll(c.Name, " ", "-"), col, k))
				if err != nil {
					return "", errors.Wrapf(err, "%s, %s", c.Name, col)
				}
				if times[c.Name] == nil {
					times[c.Name], cpus[c.Name] = map[string]stats.Sample{}, map[string]stats.Sample{}
				}
				times[c.Name][col] = append(times[c.Name][col], d.Seconds())
				cpus[c.Name][col] = append(cpus[c.Name][col], cpu.Seconds())
				s.Logf("%d MB run %d/%d %-12s %-8s build %6.2fs, client CPU %5.2fs, load %s", sizeMB, k, opts.Runs, c.Name, col, d.Seconds(), cpu.Seconds(), scenario.LoadAvg())
			}
		}
	}
	tbl := mdtable.Table{Header: []string{fmt.Sprintf("~%d MB base (%d MB compressed, %d layers): client", sizeMB, base.Compressed/scenario.MB, base.Layers),
		"eager local import", "lazy local import", "registry, new ref", "lazy/registry"}}
	for _, c := range clients {
		row := []string{c.Name}
		for _, col := range cacheCols {
			t := times[c.Name][col]
			row = append(row, fmt.Sprintf("**%s** (%s–%s)<br>client CPU %.2f s", secs(t.Median()), secs(t.Min()), secs(t.Max()), cpus[c.Name][col].Median()))
		}
		tbl.AddRow(append(row, fmt.Sprintf("%.2f", stats.Ratio(times[c.Name]["lazy"].Median(), times[c.Name]["registry"].Median())))...)
	}
	remote, err := benchRemoteNewDir(ctx, s, opts, dir, proj, pristine, newdir, base, sizeMB, rateMB)
	if err != nil {
		return "", err
	}
	return tbl.Markdown() + "\n" + remote + "\n", nil
}

// clientBuild runs build 2 once with client c on a fresh daemon, the
// pristine cache cloned as a CI job restores it, and returns the wall time
// and the CPU time (user and system) of the build command alone: the
// client's share, hashing what it places included.
func clientBuild(ctx context.Context, s *scenario.Session, dir string, proj *scenario.Project, pristine string, c benchClient, cache scenario.Cache, name string) (time.Duration, time.Duration, error) {
	runDir := filepath.Join(dir, "run")
	if err := os.MkdirAll(runDir, 0o755); err != nil {
		return 0, 0, errors.WithStack(err)
	}
	defer scenario.RemoveAll(runDir)
	if err := scenario.CloneCache(pristine, filepath.Join(runDir, "cache")); err != nil {
		return 0, 0, err
	}
	d, err := scenario.StartDaemon(ctx, s.Tools, filepath.Join(runDir, "root"), s.Config, runDir)
	if err != nil {
		return 0, 0, err
	}
	defer d.Stop()
	logPath := filepath.Join(dir, name+".log")
	logf, err := os.Create(logPath)
	if err != nil {
		return 0, 0, errors.WithStack(err)
	}
	defer logf.Close()
	var cpu time.Duration
	command := func(path string, args ...string) error {
		cmd := exec.CommandContext(ctx, path, args...)
		cmd.Env = append(os.Environ(), "DOCKER_CONFIG="+filepath.Join(runDir, "docker-config"), "BUILDX_BUILDER=bench")
		cmd.Stdout, cmd.Stderr = logf, logf
		err := cmd.Run()
		if cmd.ProcessState != nil {
			cpu = cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
		}
		return errors.Wrapf(err, "%s %s: output in %s", c.Name, strings.Join(args, " "), logPath)
	}
	if c.buildx == "" {
		start := time.Now()
		err := command(s.Tools.Buildctl, append(d.ClientArgs(d.Addr), proj.Args(cache, "")...)...)
		return time.Since(start), cpu, err
	}
	if err := command(c.buildx, "create", "--driver", "remote", "--name", "bench", d.Addr); err != nil {
		return 0, 0, err
	}
	if err := command(c.buildx, "inspect", "--bootstrap"); err != nil {
		return 0, 0, err
	}
	start := time.Now()
	err = command(c.buildx, "build", "--progress=plain", "--output", "type=cacheonly",
		"--cache-from", cache.Import, "--cache-to", cache.Export, proj.Dir)
	return time.Since(start), cpu, err
}

// benchRemoteNewDir runs the newdir case on a remote builder (remoteBuild:
// a fresh TLS daemon behind the link proxy), eager and lazy, and returns its
// table: time and bytes each way.
func benchRemoteNewDir(ctx context.Context, s *scenario.Session, opts options, dir string, proj *scenario.Project, pristine string, c scenario.Case, base scenario.BaseImage, sizeMB int, rateMB float64) (string, error) {
	tlsDir, err := s.Mkdir(fmt.Sprintf("tls-%d", sizeMB))
	if err != nil {
		return "", err
	}
	certs, err := tlsfiles.Write(tlsDir)
	if err != nil {
		return "", err
	}
	client := filepath.Join(opts.Repo, "bin", "buildclient")
	if _, err := os.Stat(client); err != nil {
		return "", errors.Errorf("%s not found: run make bin/buildclient (make bench builds it)", client)
	}
	b := &remoteBase{Base: base, Dir: dir, Proj: proj, Pristine: pristine}
	runs := map[string][]remoteRun{}
	cols := []string{"eager", "lazy"}
	for k := 1; k <= opts.Runs; k++ {
		for i := range cols {
			col := cols[(i+k-1)%len(cols)]
			rc := remoteColumn{Name: col, Title: col, Buildkitd: s.Tools.Buildkitd, Lazy: col == "lazy"}
			r, err := remoteBuild(ctx, s, client, b, certs, remoteCase{Name: "newdir", Title: c.Title, Of: "newdir", Case: c}, rc, rateMB, 0, fmt.Sprintf("remote-newdir-%s-%d", col, k))
			if err != nil {
				return "", errors.Wrapf(err, "remote, %s", col)
			}
			runs[col] = append(runs[col], r)
			s.Logf("%d MB run %d/%d remote newdir %-5s build %6.2fs, %7.1f MB client->daemon, %6.1f MB daemon->client",
				sizeMB, k, opts.Runs, col, r.Build.Seconds(), float64(r.Up)/scenario.MB, float64(r.Down)/scenario.MB)
		}
	}
	tbl := mdtable.Table{Header: []string{fmt.Sprintf("remote builder, buildctl, link %.0f MB/s each way, ~%d MB base (%d MB compressed)", rateMB, sizeMB, base.Compressed/scenario.MB), "eager import", "`lazy=true`"}}
	row := []string{c.Title}
	for _, col := range cols {
		var t, up, down stats.Sample
		for _, r := range runs[col] {
			t = append(t, r.Build.Seconds())
			up = append(up, float64(r.Up))
			down = append(down, float64(r.Down))
		}
		row = append(row, fmt.Sprintf("**%s** (%s–%s)<br>%s client→daemon, %s daemon→client", secs(t.Median()), secs(t.Min()), secs(t.Max()), bytesHuman(up.Median()), bytesHuman(down.Median())))
	}
	tbl.AddRow(row...)
	return tbl.Markdown(), nil
}
