package image

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

const buildTimeout = 5 * time.Minute

// reportSecurityOpts are the report's --security-opt flags.
var reportSecurityOpts = []string{"seccomp=unconfined", "apparmor=unconfined", "systempaths=unconfined"}

var extractingRe = regexp.MustCompile(`(?m)^#\d+ extracting sha256:[0-9a-f]{64}`)

// reportDockerfile is the report's Dockerfile: a base image, a RUN that
// installs dependencies, then the sources. copyFlags is "" for the report's
// literal COPY, or "--link ".
func reportDockerfile(copyFlags string) string {
	return "FROM node:20\n" +
		"WORKDIR /app\n" +
		"RUN mkdir -p node_modules && head -c 3000000 /usr/local/lib/node.bin >node_modules/dep.bin\n" +
		"RUN echo installed >node_modules/.done\n" +
		"COPY " + copyFlags + ". ./\n"
}

// reportRun is one run of the report's script, and what it printed.
type reportRun struct {
	output     string
	err        error
	elapsed    time.Duration
	extracting int
}

// runReport runs the report's script on the rootless image, verbatim but
// for the image name, --network host, and a -v of the buildkitd.toml that
// mirrors docker.io to our registry. lazy adds lazy=true to the import;
// securityOpts are the --security-opt flags, reportSecurityOpts in the
// report.
func (e *env) runReport(t *testing.T, ctxDir, cacheDir string, lazy bool, securityOpts []string) reportRun {
	t.Helper()
	args := []string{"run", "--rm", "--network", "host"}
	for _, o := range securityOpts {
		args = append(args, "--security-opt", o)
	}
	importCache := "--import-cache=type=local,src=/cache"
	if lazy {
		importCache += ",lazy=true"
	}
	args = append(args,
		"-v", ctxDir+":/workspace:ro",
		"-v", cacheDir+":/cache:rw",
		"-v", e.mirrorConfig+":/home/user/.config/buildkit/buildkitd.toml:ro",
		"--entrypoint", "buildctl-daemonless.sh",
		e.rootlessImage,
		"build",
		"--frontend=dockerfile.v0",
		"--progress=plain",
		"--local=context=/workspace",
		"--local=dockerfile=/workspace",
		"--export-cache=type=local,dest=/cache,mode=max",
		importCache,
	)
	ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, e.tl.docker, args...)
	cmd.Env = e.dockerEnv()
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	err := cmd.Run()
	r := reportRun{output: out.String(), err: err, elapsed: time.Since(start)}
	r.extracting = len(extractingRe.FindAllString(r.output, -1))
	if ctx.Err() != nil {
		r.err = fmt.Errorf("docker run did not finish within %s: %w", buildTimeout, err)
	}
	t.Logf("report script, lazy=%v: %.2fs, %d extracting lines, %v", lazy, r.elapsed.Seconds(), r.extracting, exitStatus(r.err))
	return r
}

func exitStatus(err error) string {
	if err == nil {
		return "exit 0"
	}
	return err.Error()
}

// userDir makes a directory that uid 1000, the rootless image's user, may
// write.
func userDir(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "d")
	require.NoError(t, os.Mkdir(dir, 0o755))
	require.NoError(t, os.Chown(dir, 1000, 1000))
	return dir
}

// copyUserDir copies src, as cp -a does, to a new directory of uid 1000.
func copyUserDir(t *testing.T, src string) string {
	t.Helper()
	dst := userDir(t)
	out, err := exec.Command("cp", "-a", src+"/.", dst).CombinedOutput()
	require.NoError(t, err, "cp -a %s %s: %s", src, dst, out)
	return dst
}

func writeContext(t *testing.T, dir, dockerfile, source string) {
	t.Helper()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte(dockerfile), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "app.js"), []byte(source), 0o644))
}

// TestReportScript runs the report's script: build 1 seeds the cache
// directory, then build 2 runs on a copy of it, eager and with lazy=true,
// in three variants: the report's literal COPY with a changed source, the
// same with COPY --link, and nothing changed. Every build succeeds; with
// lazy=true the --link and all-cached rebuilds extract nothing, the eager
// ones extract the imported layers.
func TestReportScript(t *testing.T) {
	e := requireEnv(t)

	type variant struct {
		name       string
		copyFlags  string
		changed    bool
		lazyBlobs0 bool // lazy build 2 extracts nothing
	}
	variants := []variant{
		{name: "report's COPY, source changed", copyFlags: "", changed: true},
		{name: "COPY --link, source changed", copyFlags: "--link ", changed: true, lazyBlobs0: true},
		{name: "all cached", copyFlags: "", changed: false, lazyBlobs0: true},
	}
	var table []string
	for _, v := range variants {
		t.Run(strings.NewReplacer(" ", "_", ",", "", "'", "").Replace(v.name), func(t *testing.T) {
			ctxDir := userDir(t)
			cache := userDir(t)
			writeContext(t, ctxDir, reportDockerfile(v.copyFlags), "console.log(1)\n")
			seed := e.runReport(t, ctxDir, cache, false, reportSecurityOpts)
			require.NoError(t, seed.err, "build 1:\n%s", seed.output)
			require.FileExists(t, filepath.Join(cache, "index.json"), "build 1 exported no cache:\n%s", seed.output)

			if v.changed {
				writeContext(t, ctxDir, reportDockerfile(v.copyFlags), "console.log(2)\n")
			}
			eager := e.runReport(t, ctxDir, copyUserDir(t, cache), false, reportSecurityOpts)
			require.NoError(t, eager.err, "eager build 2:\n%s", eager.output)
			lazy := e.runReport(t, ctxDir, copyUserDir(t, cache), true, reportSecurityOpts)
			require.NoError(t, lazy.err, "lazy build 2:\n%s", lazy.output)

			require.Positive(t, eager.extracting, "eager build 2 extracted nothing: it did not import the cache?\n%s", eager.output)
			if v.lazyBlobs0 {
				require.Zero(t, lazy.extracting, "lazy build 2 extracted imported layers:\n%s", lazy.output)
			}
			table = append(table, fmt.Sprintf("| %s | %.2f s | %.2f s | %d / %d |", v.name, eager.elapsed.Seconds(), lazy.elapsed.Seconds(), eager.extracting, lazy.extracting))
		})
	}
	t.Logf("build 2 of the report's script (docker run, rootless image):\n| variant | eager | lazy=true | extracting lines eager / lazy |\n| --- | --- | --- | --- |\n%s", strings.Join(table, "\n"))
}
