package main

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestClassify(t *testing.T) {
	const blob = "sha256:3b2a8f1c0e4d5a6b7c8d9e0f1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d"
	for _, tc := range []struct {
		name      string
		text      string
		exportDir string
		want      Kind
	}{
		{
			name: "missing blob after a rotation",
			text: "error: failed to solve: failed to compute cache key: local cache /tmp/c: blob " + blob + " is missing from the cache directory (served by session abc); the directory changed after the cache was imported: export the cache again, or import it without lazy=true: not found",
			want: KindMissing,
		},
		{
			name: "no live session",
			text: "error: failed to solve: local cache /tmp/c: no active session of this build serves the cache directory, needed to read blob " + blob + ": import the same directory in this build (buildctl --import-cache or buildx --cache-from type=local,src=/tmp/c), or import it without lazy=true: unavailable",
			want: KindNoSession,
		},
		{
			name: "session failed, quoting gRPC's closing error",
			text: "error: failed to solve: local cache /tmp/c: could not read blob " + blob + " through session s1 (rpc error: code = Canceled desc = grpc: the client connection is closing): import the same directory in this build",
			want: KindUnreadable,
		},
		{
			name: "failover after a failed read",
			text: "error: failed to solve: reading through session s1 failed: rpc error: code = Unavailable desc = transport is closing: local cache /tmp/c: blob " + blob + " is missing from the cache directory (served by session s2); the directory changed after the cache was imported",
			want: KindMissing,
		},
		{
			name: "corrupt",
			text: "error: failed to solve: local cache /tmp/c: blob " + blob + " is corrupt: its content has digest sha256:00; delete the cache directory or export the cache again",
			want: KindCorrupt,
		},
		{
			name: "truncated",
			text: "error: failed to solve: local cache /tmp/c: blob " + blob + " is truncated: 10 of 20 bytes; delete the cache directory or export the cache again",
			want: KindCorrupt,
		},
		{
			name: "manifest gone",
			text: "error: failed to solve: local cache /tmp/c: no session of this build holds cache manifest " + blob + ": not found",
			want: KindNoManifest,
		},
		{
			name: "bare gRPC closing",
			text: "error: failed to solve: rpc error: code = Canceled desc = grpc: the client connection is closing",
			want: KindClosing,
		},
		{
			name: "transport closing",
			text: "error: failed to solve: failed to read blob: rpc error: code = Unavailable desc = transport is closing",
			want: KindClosing,
		},
		{
			name: "a documented phrase without our prefix is not ours",
			text: "error: failed to solve: blob " + blob + " is corrupt: its content has digest sha256:00",
			want: KindOther,
		},
		{
			name: "anything else",
			text: "error: failed to solve: process \"/bin/sh -c false\" did not complete successfully: exit code: 1",
			want: KindOther,
		},
		{
			name:      "export into the directory a rotation removed",
			text:      "error: failed to solve: error writing config blob: failed to open writer: rpc error: code = Unknown desc = mkdir /tmp/c/ingest/971d: no such file or directory",
			exportDir: "/tmp/c",
			want:      KindExportRemoved,
		},
		{
			name: "the same without an export into the directory",
			text: "error: failed to solve: error writing config blob: failed to open writer: rpc error: code = Unknown desc = mkdir /tmp/c/ingest/971d: no such file or directory",
			want: KindOther,
		},
		{
			name:      "a missing file elsewhere",
			text:      "error: failed to solve: open /tmp/other/x: no such file or directory",
			exportDir: "/tmp/c",
			want:      KindOther,
		},
		{
			name:      "a directory whose name extends the export's",
			text:      "error: failed to solve: mkdir /tmp/c-new-1/ingest/1: no such file or directory",
			exportDir: "/tmp/c",
			want:      KindOther,
		},
		{
			name: "no error line",
			text: "",
			want: KindNoError,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.want, Classify(tc.text, tc.exportDir))
		})
	}
}

func TestErrorTextIsTheLastErrorLine(t *testing.T) {
	log := "#5 importing cache manifest from local:123\n" +
		"#5 ERROR: local cache /tmp/c: no session of this build holds cache manifest sha256:aa\n" +
		"#9 [job 2/3] RUN ...\n" +
		"error: failed to solve: process \"/bin/sh -c x\" did not complete successfully: exit code: 1\n"
	require.Equal(t, "error: failed to solve: process \"/bin/sh -c x\" did not complete successfully: exit code: 1", ErrorText(log))
	require.Equal(t, KindOther, Classify(ErrorText(log), ""), "a skipped cache import earlier in the log does not decide the outcome")
	require.Equal(t, "error: x", ErrorText("error: x\n"))
	require.Empty(t, ErrorText("#1 done\n"))
}

func TestExpected(t *testing.T) {
	for _, k := range Kinds {
		switch k {
		case KindClosing, KindTimeout, KindWrongOutput, KindDaemonExited, KindOther, KindNoError:
			require.False(t, k.Expected(), k)
		default:
			require.True(t, k.Expected(), k)
		}
	}
}

func TestUnstamp(t *testing.T) {
	log := "[    1.250] #1 DONE 0.0s\n[   12.000] error: failed to solve: x\n"
	require.Equal(t, "#1 DONE 0.0s\nerror: failed to solve: x\n", unstamp(log))
	require.Equal(t, "error: failed to solve: x", ErrorText(unstamp(log)))
}
