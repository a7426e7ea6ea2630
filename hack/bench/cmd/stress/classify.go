package main

import (
	"strings"
)

// Kind is how one build of the stress run ended.
type Kind string

// The kinds a build may end with. Expected reports which of them the
// project documents as a possible outcome of a lazily imported directory
// changing under a build (README "When something is wrong",
// cache/remotecache/local/provider.go and verify.go); any other fails the
// run.
const (
	KindOK Kind = "ok"

	// Documented failures of a lazy import.
	KindMissing    Kind = "blob missing"       // "... is missing from the cache directory"
	KindNoSession  Kind = "no session"         // "no active session of this build serves the cache directory"
	KindUnreadable Kind = "blob unreadable"    // "could not read blob ... through session"
	KindCorrupt    Kind = "blob corrupt"       // "blob ... is corrupt" / "is truncated" / "is larger than"
	KindNoManifest Kind = "manifest not found" // "no session of this build holds cache manifest"

	// Upstream's local cache exporter, unchanged by the project, writing
	// into a directory that a rotation removed under it: not an import
	// error, the same with eager import.
	KindExportRemoved Kind = "export dir removed"

	// Outcomes that are bugs.
	KindClosing      Kind = "grpc closing"  // gRPC's "the client connection is closing" reached the user
	KindTimeout      Kind = "timeout"       // the build did not end within its timeout: a hang
	KindWrongOutput  Kind = "wrong output"  // the build succeeded, its files are not what it computes
	KindDaemonExited Kind = "daemon exited" // buildkitd exited during the round
	KindOther        Kind = "other error"   // a failure text none of the above
	KindNoError      Kind = "no error text" // buildctl failed without printing "error: "
)

// Kinds lists every kind in the order the summary shows them.
var Kinds = []Kind{
	KindOK,
	KindMissing, KindNoSession, KindUnreadable, KindCorrupt, KindNoManifest,
	KindExportRemoved,
	KindClosing, KindTimeout, KindWrongOutput, KindDaemonExited, KindOther, KindNoError,
}

// Expected reports whether a build that ended with k leaves the run green.
func (k Kind) Expected() bool {
	switch k {
	case KindOK, KindMissing, KindNoSession, KindUnreadable, KindCorrupt, KindNoManifest, KindExportRemoved:
		return true
	}
	return false
}

// documented maps a distinctive part of each documented error text to its
// kind, most specific first. A documented error may quote the session
// error it fell back from ("could not read blob ... (rpc error: ... the
// client connection is closing)"): that is the wrapping the failover
// exists for, so these are matched before gRPC's text.
var documented = []struct {
	text string
	kind Kind
}{
	{"is missing from the cache directory", KindMissing},
	{"no active session of this build serves the cache directory", KindNoSession},
	{"no session of this build holds cache manifest", KindNoManifest},
	{" is corrupt: its content has digest", KindCorrupt},
	{" is truncated: ", KindCorrupt},
	{" is larger than the ", KindCorrupt},
	{"could not read blob ", KindUnreadable},
}

// closing are gRPC's texts for a call on a connection that is going away.
var closing = []string{
	"the client connection is closing",
	"transport is closing",
}

// ErrorText is the error buildctl printed last in log, its "error: ..."
// line and what follows; empty if there is none. Progress lines before it
// may quote other errors (a cache import that failed and was skipped),
// which do not decide how the build ended.
func ErrorText(log string) string {
	i := strings.LastIndex(log, "\nerror: ")
	if i < 0 {
		if !strings.HasPrefix(log, "error: ") {
			return ""
		}
		return strings.TrimSpace(log)
	}
	return strings.TrimSpace(log[i+1:])
}

// Classify says how a build ended from buildctl's error text (ErrorText)
// and the directory it exported the cache into ("" if it exported none, or
// not into the shared directory). A timeout, a wrong output and a daemon
// that exited are found by the caller, not in the text.
func Classify(errText, exportDir string) Kind {
	if errText == "" {
		return KindNoError
	}
	for _, d := range documented {
		if strings.Contains(errText, d.text) && strings.Contains(errText, "local cache ") {
			return d.kind
		}
	}
	if exportDir != "" && strings.Contains(errText, "no such file or directory") &&
		strings.Contains(errText, exportDir+"/") && !strings.Contains(errText, "local cache ") {
		return KindExportRemoved
	}
	for _, c := range closing {
		if strings.Contains(errText, c) {
			return KindClosing
		}
	}
	return KindOther
}
