package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	contentlocal "github.com/containerd/containerd/v2/plugins/content/local"
	"github.com/docker/cli/cli/config"
	"github.com/moby/buildkit/client"
	"github.com/moby/buildkit/cmd/buildctl/build"
	gateway "github.com/moby/buildkit/frontend/gateway/client"
	"github.com/moby/buildkit/session"
	"github.com/moby/buildkit/session/auth/authprovider"
	sessioncontent "github.com/moby/buildkit/session/content"
	"github.com/moby/buildkit/session/filesync"
	"github.com/moby/buildkit/session/grpchijack"
	"github.com/moby/buildkit/util/progress/progressui"
	digest "github.com/opencontainers/go-digest"
	"github.com/pkg/errors"
	"github.com/tonistiigi/fsutil"
	fstypes "github.com/tonistiigi/fsutil/types"
	"golang.org/x/sync/errgroup"
)

// stringList is a flag that may be given many times.
type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, " ") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

type options struct {
	Addr, ServerName, CACert, Cert, Key string
	Frontend                            string
	Locals, Opts, Imports, Exports      stringList
	Report                              string
	ServeCache                          bool
}

// Report is what one build measured; the bench reads it as JSON.
type Report struct {
	// Seconds is the wall time of the build, from connecting to the
	// daemon until the build returned.
	Seconds float64 `json:"seconds"`
	// Requests counts the requests the client's session served, by full
	// gRPC method without the leading slash.
	Requests map[string]int `json:"requests"`
	// Store counts, with --serve-cache only, the calls the local cache
	// directories' content stores served, as "method: call".
	Store map[string]int `json:"store,omitempty"`
	// InfoDigests counts, with --serve-cache only, the Info requests by
	// the digest they asked for.
	InfoDigests map[digest.Digest]int `json:"info_digests,omitempty"`
}

func main() {
	o, err := parseArgs(os.Args[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, "buildclient:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	rep, err := run(ctx, o)
	if err == nil {
		err = writeReport(o.Report, rep)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "buildclient:", err)
		os.Exit(1)
	}
}

// parseArgs reads buildctl's command line: global flags, the command
// build, its flags.
func parseArgs(args []string) (options, error) {
	var o options
	global := flag.NewFlagSet("buildclient", flag.ContinueOnError)
	global.StringVar(&o.Addr, "addr", "unix:///run/buildkit/buildkitd.sock", "buildkitd address")
	global.StringVar(&o.ServerName, "tlsservername", "", "buildkitd server name for certificate validation (default: the host of --addr)")
	global.StringVar(&o.CACert, "tlscacert", "", "CA certificate for validation")
	global.StringVar(&o.Cert, "tlscert", "", "client certificate")
	global.StringVar(&o.Key, "tlskey", "", "client key")
	if err := global.Parse(args); err != nil {
		return o, err
	}
	if global.Arg(0) != "build" {
		return o, errors.Errorf("want the command build after the global flags, got %q", global.Args())
	}
	b := flag.NewFlagSet("buildclient build", flag.ContinueOnError)
	progress := b.String("progress", "plain", "progress output: plain only, on stderr")
	b.StringVar(&o.Frontend, "frontend", "", "frontend, such as dockerfile.v0")
	b.Var(&o.Locals, "local", "local directory, name=path (repeatable)")
	b.Var(&o.Opts, "opt", "frontend option, key=value (repeatable)")
	b.Var(&o.Imports, "import-cache", "cache import, as buildctl's --import-cache (repeatable)")
	b.Var(&o.Exports, "export-cache", "cache export, as buildctl's --export-cache (repeatable)")
	b.StringVar(&o.Report, "report", "", "file to write the JSON report to (default: stdout)")
	b.BoolVar(&o.ServeCache, "serve-cache", false, "serve the local cache directories through a session of the client's own whose content stores count their calls too")
	if err := b.Parse(global.Args()[1:]); err != nil {
		return o, err
	}
	switch {
	case b.NArg() > 0:
		return o, errors.Errorf("unexpected arguments %q", b.Args())
	case *progress != "plain":
		return o, errors.Errorf("--progress=%s: only plain is supported", *progress)
	case o.Frontend == "":
		return o, errors.New("--frontend is required: buildclient does not read LLB from stdin")
	}
	return o, nil
}

func writeReport(path string, rep Report) error {
	b, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return errors.WithStack(err)
	}
	b = append(b, '\n')
	if path == "" {
		_, err = os.Stdout.Write(b)
		return errors.WithStack(err)
	}
	return errors.Wrapf(os.WriteFile(path, b, 0o644), "failed to write the report")
}

// run builds as `buildctl build --progress=plain` does with the same
// flags, with a tracer provider that counts the session's requests.
func run(ctx context.Context, o options) (Report, error) {
	counter := newRequestCounter()
	tp := newCountingTracerProvider(counter)
	defer tp.Shutdown(context.WithoutCancel(ctx))
	// The client's own connection to the daemon stays as buildctl's
	// without tracing; only the solve, and so its session, get the span.
	spanCtx, span := tp.Tracer("buildclient").Start(ctx, "build")
	defer span.End()

	solveOpt, err := solveOptions(o)
	if err != nil {
		return Report{}, err
	}
	start := time.Now()
	c, err := client.New(ctx, o.Addr, clientOptions(o)...)
	if err != nil {
		return Report{}, err
	}
	defer c.Close()

	var stores map[string]*countingStore
	eg, egCtx := errgroup.WithContext(spanCtx)
	if o.ServeCache {
		var s *session.Session
		s, stores, err = cacheSession(spanCtx, solveOpt)
		if err != nil {
			return Report{}, err
		}
		solveOpt.SharedSession, solveOpt.SessionPreInitialized = s, true
		eg.Go(func() error {
			return s.Run(egCtx, grpchijack.Dialer(c.ControlClient()))
		})
		defer s.Close()
	}

	d, err := progressui.NewDisplay(os.Stderr, progressui.PlainMode)
	if err != nil {
		return Report{}, errors.WithStack(err)
	}
	ch := make(chan *client.SolveStatus)
	eg.Go(func() error {
		// the display ends when the solve closes ch
		_, err := d.UpdateFrom(context.WithoutCancel(egCtx), ch)
		return err
	})
	sreq := gateway.SolveRequest{Frontend: solveOpt.Frontend, FrontendOpt: solveOpt.FrontendAttrs}
	for _, e := range solveOpt.CacheImports {
		sreq.CacheImports = append(sreq.CacheImports, gatewayCacheEntry(e))
	}
	eg.Go(func() error {
		defer func() {
			if solveOpt.SharedSession != nil {
				solveOpt.SharedSession.Close()
			}
		}()
		_, err := c.Build(egCtx, solveOpt, "buildctl", func(ctx context.Context, gc gateway.Client) (*gateway.Result, error) {
			return gc.Solve(ctx, sreq)
		}, ch)
		return err
	})
	err = eg.Wait()
	rep := Report{Seconds: time.Since(start).Seconds(), Requests: counter.Counts()}
	if stores != nil {
		rep.Store, rep.InfoDigests = map[string]int{}, map[digest.Digest]int{}
		for _, s := range stores {
			for k, v := range s.Counts() {
				rep.Store[k] += v
			}
			for k, v := range s.InfoDigests() {
				rep.InfoDigests[k] += v
			}
		}
	}
	return rep, err
}

func clientOptions(o options) []client.ClientOpt {
	var opts []client.ClientOpt
	serverName := o.ServerName
	if serverName == "" {
		if u, err := url.Parse(o.Addr); err == nil {
			serverName = u.Hostname()
		}
	}
	if o.CACert != "" {
		opts = append(opts, client.WithServerConfig(serverName, o.CACert))
	}
	if o.Cert != "" || o.Key != "" {
		opts = append(opts, client.WithCredentials(o.Cert, o.Key))
	}
	return opts
}

// solveOptions parses the flags as buildctl does.
func solveOptions(o options) (client.SolveOpt, error) {
	imports, err := build.ParseImportCache(o.Imports)
	if err != nil {
		return client.SolveOpt{}, err
	}
	exports, err := build.ParseExportCache(o.Exports)
	if err != nil {
		return client.SolveOpt{}, err
	}
	attrs, err := build.ParseOpt(o.Opts)
	if err != nil {
		return client.SolveOpt{}, errors.Wrap(err, "invalid opt")
	}
	locals, err := build.ParseLocal(o.Locals)
	if err != nil {
		return client.SolveOpt{}, errors.Wrap(err, "invalid local")
	}
	auth := authprovider.NewDockerAuthProvider(authprovider.DockerAuthProviderConfig{
		AuthConfigProvider: authprovider.LoadAuthConfig(config.LoadDefaultConfigFile(os.Stderr)),
	})
	return client.SolveOpt{
		Frontend:      o.Frontend,
		FrontendAttrs: attrs,
		LocalMounts:   locals,
		CacheImports:  imports,
		CacheExports:  exports,
		Session:       []session.Attachable{auth},
	}, nil
}

func gatewayCacheEntry(e client.CacheOptionsEntry) gateway.CacheOptionsEntry {
	return gateway.CacheOptionsEntry{Type: e.Type, Attrs: e.Attrs}
}

// cacheSession is the session client.Solve would make for opt, except
// that the local cache directories are served by counting stores: the
// session's attachables, the local directories (uid and gid reset as
// client.Solve does) and one content store per cache directory, under the
// ID client.Solve gives it.
func cacheSession(ctx context.Context, opt client.SolveOpt) (*session.Session, map[string]*countingStore, error) {
	s, err := session.NewSession(ctx, "")
	if err != nil {
		return nil, nil, errors.Wrap(err, "failed to create session")
	}
	for _, a := range opt.Session {
		s.Allow(a)
	}
	dirs := filesync.StaticDirSource{}
	for name, fs := range opt.LocalMounts {
		fs, err := fsutil.NewFilterFS(fs, &fsutil.FilterOpt{Map: func(_ string, st *fstypes.Stat) fsutil.MapResult {
			st.Uid, st.Gid = 0, 0
			return fsutil.MapResultKeep
		}})
		if err != nil {
			return nil, nil, errors.WithStack(err)
		}
		dirs[name] = fs
	}
	s.Allow(filesync.NewFSSyncProvider(dirs))
	stores := map[string]*countingStore{}
	add := func(dir string) error {
		if dir == "" || stores["local:"+dir] != nil {
			return nil
		}
		cs, err := contentlocal.NewStore(dir)
		if err != nil {
			return errors.Wrapf(err, "failed to open the local cache %s", dir)
		}
		stores["local:"+dir] = newCountingStore(cs)
		return nil
	}
	for _, e := range opt.CacheImports {
		if e.Type == "local" {
			if err := add(e.Attrs["src"]); err != nil {
				return nil, nil, err
			}
		}
	}
	for _, e := range opt.CacheExports {
		if e.Type == "local" {
			if err := add(e.Attrs["dest"]); err != nil {
				return nil, nil, err
			}
		}
	}
	attach := map[string]content.Store{}
	for id, cs := range stores {
		attach[id] = cs
	}
	s.Allow(sessioncontent.NewAttachable(attach))
	return s, stores, nil
}
