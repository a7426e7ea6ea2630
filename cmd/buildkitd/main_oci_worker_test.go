//go:build linux

package main

import (
	"testing"

	"github.com/moby/buildkit/cmd/buildkitd/config"
	"github.com/moby/sys/userns"
	"github.com/stretchr/testify/require"
)

func TestParallelUnpackOff(t *testing.T) {
	if userns.RunningInUserNS() {
		t.Skip("in a user namespace every case is off")
	}
	for _, tc := range []struct {
		name        string
		cfg         config.OCIConfig
		snapshotter string
		remapped    bool
		want        string
	}{
		{name: "overlayfs", snapshotter: "overlayfs"},
		{name: "native", snapshotter: "native", want: "the snapshotter is native, not overlayfs"},
		{name: "proxy", cfg: config.OCIConfig{ProxySnapshotterPath: "/run/sn.sock"}, snapshotter: "overlayfs", want: "the snapshotter is a proxy"},
		{name: "rootless", cfg: config.OCIConfig{Rootless: true}, snapshotter: "overlayfs", want: "buildkitd runs rootless"},
		{name: "remapped", snapshotter: "overlayfs", remapped: true, want: "user namespace remapping is on"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.want, parallelUnpackOff(tc.cfg, tc.snapshotter, tc.remapped))
		})
	}
}
