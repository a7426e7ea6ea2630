package image

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

func TestMain(m *testing.M) {
	// dockerd runs this binary, under another name, as its runtime.
	if filepath.Base(os.Args[0]) == runtimeName {
		if err := runRuntimeWrapper(os.Args[1:]); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		return
	}
	code := m.Run()
	// The dockerd and registry the tests share stop here; when the binary
	// dies first (a -timeout panic), Pdeathsig stops them.
	stopShared()
	os.Exit(code)
}
