package image

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/pkg/errors"
)

// runtimeName is the name dockerd knows the runtime wrapper by, and the name
// of the link to the test binary that makes it run as that wrapper.
const runtimeName = "runc-no-sys-resource"

const capSysResource = "CAP_SYS_RESOURCE"

// needRuntimeWrapper tells whether this machine's capability bounding set
// lacks CAP_SYS_RESOURCE (bit 24). Docker grants it to privileged
// containers, buildx's docker-container driver among them, and runc then
// fails with "unable to apply caps: operation not permitted".
func needRuntimeWrapper() bool {
	dt, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return false
	}
	for line := range strings.Lines(string(dt)) {
		if v, ok := strings.CutPrefix(line, "CapBnd:"); ok {
			bnd, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err != nil {
				return false
			}
			return bnd&(1<<24) == 0
		}
	}
	return false
}

// runRuntimeWrapper is main when the test binary runs as the runtime
// wrapper: it removes CAP_SYS_RESOURCE from the container's spec
// (`runc create --bundle DIR`, DIR/config.json) or from an exec's process
// (`runc exec --process FILE`), then execs runc with the same arguments.
// Test-only: a normal host keeps the capability.
func runRuntimeWrapper(args []string) error {
	cmd, bundle, process := parseRuncArgs(args)
	switch cmd {
	case "create", "run":
		if bundle == "" {
			bundle = "."
		}
		if err := editJSON(filepath.Join(bundle, "config.json"), func(spec map[string]any) {
			if p, ok := spec["process"].(map[string]any); ok {
				dropCap(p)
			}
		}); err != nil {
			return err
		}
	case "exec":
		if process != "" {
			if err := editJSON(process, dropCap); err != nil {
				return err
			}
		}
	}
	runc, err := exec.LookPath("runc")
	if err != nil {
		for _, p := range []string{"/usr/sbin/runc", "/usr/bin/runc"} {
			if _, err2 := os.Stat(p); err2 == nil {
				runc, err = p, nil
				break
			}
		}
		if err != nil {
			return errors.Wrap(err, "runtime wrapper: runc not found")
		}
	}
	return syscall.Exec(runc, append([]string{"runc"}, args...), os.Environ())
}

// parseRuncArgs finds runc's subcommand and the values of its --bundle and
// --process flags, in their `--flag value`, `--flag=value` and short forms.
func parseRuncArgs(args []string) (cmd, bundle, process string) {
	for i := 0; i < len(args); i++ {
		a := args[i]
		if cmd == "" {
			if !strings.HasPrefix(a, "-") {
				cmd = a
				continue
			}
			// runc's global flags that take a value
			if !strings.Contains(a, "=") && slices.Contains([]string{"--root", "--log", "--log-format", "--criu", "--rootless"}, a) {
				i++
			}
			continue
		}
		for _, f := range []struct {
			names []string
			dst   *string
		}{
			{[]string{"--bundle", "-b"}, &bundle},
			{[]string{"--process", "-p"}, &process},
		} {
			for _, n := range f.names {
				if a == n && i+1 < len(args) {
					*f.dst = args[i+1]
				} else if v, ok := strings.CutPrefix(a, n+"="); ok {
					*f.dst = v
				}
			}
		}
	}
	return cmd, bundle, process
}

// dropCap removes CAP_SYS_RESOURCE from every set of an OCI process's
// capabilities.
func dropCap(process map[string]any) {
	caps, ok := process["capabilities"].(map[string]any)
	if !ok {
		return
	}
	for set, v := range caps {
		list, ok := v.([]any)
		if !ok {
			continue
		}
		caps[set] = slices.DeleteFunc(list, func(c any) bool { return c == capSysResource })
	}
}

func editJSON(path string, edit func(map[string]any)) error {
	fi, err := os.Stat(path)
	if err != nil {
		return errors.Wrap(err, "runtime wrapper")
	}
	dt, err := os.ReadFile(path)
	if err != nil {
		return errors.Wrap(err, "runtime wrapper")
	}
	var m map[string]any
	if err := json.Unmarshal(dt, &m); err != nil {
		return errors.Wrapf(err, "runtime wrapper: failed to parse %s", path)
	}
	edit(m)
	dt, err = json.Marshal(m)
	if err != nil {
		return errors.Wrapf(err, "runtime wrapper: failed to encode %s", path)
	}
	return errors.Wrap(os.WriteFile(path, dt, fi.Mode().Perm()), "runtime wrapper")
}
