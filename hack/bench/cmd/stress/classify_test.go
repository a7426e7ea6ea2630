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
			text: "error: failed to solve: failed to compute cache key: failed to read blob " + blob + " from local cache /tmp/c: content digest " + blob + ": not found",
			want: KindMissing,
		},
		{
			name: "a session that does not serve the directory",
			text: "error: failed to solve: failed to read blob " + blob + " from local cache /tmp/c: rpc error: code = NotFound desc = unknown store local:/tmp/c: not found",
			want: KindNoSession,
		},
		{
			name: "a session with no content store at all",
			text: "error: failed to solve: failed to read blob " + blob + " from local cache /tmp/c: rpc error: code = Unimplemented desc = unknown service containerd.services.content.v1.Content",
			want: KindNoSession,
		},
		{
			name: "a read that fails otherwise",
			text: "error: failed to solve: failed to read blob " + blob + " from local cache /tmp/c: rpc error: code = Unknown desc = permission denied",
			want: KindUnreadable,
		},
		{
			name: "gRPC's closing error inside a failed read is a bug",
			text: "error: failed to solve: failed to read blob " + blob + " from local cache /tmp/c: rpc error: code = Canceled desc = grpc: the client connection is closing",
			want: KindClosing,
		},
		{
			name: "corrupt",
			text: "error: failed to solve: failed commit on ref \"layer-" + blob + "\": unexpected commit digest sha256:00, expected " + blob + ": failed precondition",
			want: KindCorrupt,
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
			name: "a read failure of another provider is not ours",
			text: "error: failed to solve: failed to read blob " + blob + ": not found",
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
		"#5 ERROR: failed to configure local cache importer: failed to read blob sha256:aa from local cache /tmp/c: not found\n" +
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
