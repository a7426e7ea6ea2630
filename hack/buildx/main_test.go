package buildx

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// runtimeName is what the dockerd of container_test.go knows this test
// binary by when it runs it as the containers' runtime (runtimeWrapper).
const runtimeName = "runc-no-sys-resource"

func TestMain(m *testing.M) {
	if filepath.Base(os.Args[0]) == runtimeName {
		if err := runtimeWrapper(os.Args[1:]); err != nil {
			fmt.Fprintln(os.Stderr, "runtime wrapper:", err)
			os.Exit(1)
		}
	}
	os.Exit(m.Run())
}

// lacksSysResource tells whether this machine's capability bounding set
// lacks CAP_SYS_RESOURCE (bit 24), which Docker grants to privileged
// containers, and buildx's docker-container driver runs its container
// privileged: runc then fails with "unable to apply caps".
func lacksSysResource() bool {
	dt, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return false
	}
	for line := range strings.Lines(string(dt)) {
		if v, ok := strings.CutPrefix(line, "CapBnd:"); ok {
			bnd, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			return err == nil && bnd&(1<<24) == 0
		}
	}
	return false
}

// runtimeWrapper takes CAP_SYS_RESOURCE out of the OCI spec runc is about
// to apply (the bundle's config.json of create and run, the process file
// of exec), then execs runc with the same arguments. Test-only: a normal
// host has the capability.
func runtimeWrapper(args []string) error {
	var sub, spec string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if sub == "" {
			if !strings.HasPrefix(a, "-") {
				sub = a
			} else if slices.Contains([]string{"--root", "--log", "--log-format", "--criu"}, a) {
				i++ // a global flag's value
			}
			continue
		}
		for _, f := range []string{"--bundle", "-b", "--process", "-p"} {
			v, ok := strings.CutPrefix(a, f+"=")
			if !ok && a == f && i+1 < len(args) {
				v, ok = args[i+1], true
			}
			if !ok {
				continue
			}
			if f == "--bundle" || f == "-b" {
				v = filepath.Join(v, "config.json")
			}
			spec = v
		}
	}
	if sub == "create" || sub == "run" {
		if spec == "" {
			spec = "config.json"
		}
		if err := dropSysResource(spec, true); err != nil {
			return err
		}
	} else if sub == "exec" && spec != "" {
		if err := dropSysResource(spec, false); err != nil {
			return err
		}
	}
	runc, err := exec.LookPath("runc")
	if err != nil {
		return err
	}
	return syscall.Exec(runc, append([]string{"runc"}, args...), os.Environ())
}

// dropSysResource rewrites the spec at path (a whole container's, or an
// exec's process) without CAP_SYS_RESOURCE in any capability set.
func dropSysResource(path string, container bool) error {
	dt, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var doc map[string]any
	if err := json.Unmarshal(dt, &doc); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	process := doc
	if container {
		process, _ = doc["process"].(map[string]any)
	}
	if caps, ok := process["capabilities"].(map[string]any); ok {
		for set, list := range caps {
			if l, ok := list.([]any); ok {
				caps[set] = slices.DeleteFunc(l, func(c any) bool { return c == "CAP_SYS_RESOURCE" })
			}
		}
	}
	if dt, err = json.Marshal(doc); err != nil {
		return err
	}
	return os.WriteFile(path, dt, 0o600)
}
