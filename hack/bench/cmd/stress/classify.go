package main

import (
	"strings"
)

// Kind is how one build of the stress run ended.
type Kind string

// The kinds a build may end with. Expected reports which of them the
// project documents as a possible outcome of a lazily imported directory
// changing under a build (docs/lazy-local-cache.md); any other fails the
// run. The daemon reports every lazy read that fails as "failed to read
// blob <digest> from local cache <dir>: <cause>"; the cause decides the
// kind.
const (
	KindOK Kind = "ok"

	// Documented failures of a lazy import.
	KindMissing    Kind = "blob missing"    // the directory no longer holds the blob: "...: not found"
	KindNoSession  Kind = "not served"      // no session of the build serves the directory
	KindUnreadable Kind = "blob unreadable" // any other cause of a failed read
	KindCorrupt    Kind = "blob corrupt"    // the blob read does not match its digest ("unexpected commit digest")

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
	KindMissing, KindNoSession, KindUnreadable, KindCorrupt,
	KindExportRemoved,
	KindClosing, KindTimeout, KindWrongOutput, KindDaemonExited, KindOther, KindNoError,
}

// Expected reports whether a build that ended with k leaves the run green.
func (k Kind) Expected() bool {
	switch k {
	case KindOK, KindMissing, KindNoSession, KindUnreadable, KindCorrupt, KindExportRemoved:
		return true
	}
	return false
}

// readFailure is how the daemon reports a lazy read that failed.
const readFailure = "failed to read blob "

// causes maps a distinctive part of the cause of a failed lazy read to its
// kind, in order.
var causes = []struct {
	text string
	kind Kind
}{
	{"unknown store ", KindNoSession},
	{"unknown service containerd.services.content.v1.Content", KindNoSession},
	{"no active sessions", KindNoSession},
	{": not found", KindMissing},
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
	if i := strings.Index(errText, readFailure); i >= 0 && strings.Contains(errText[i:], " from local cache ") {
		cause := errText[i:]
		for _, c := range closing {
			if strings.Contains(cause, c) {
				return KindClosing
			}
		}
		for _, c := range causes {
			if strings.Contains(cause, c.text) {
				return c.kind
			}
		}
		return KindUnreadable
	}
	if strings.Contains(errText, "unexpected commit digest") {
		return KindCorrupt
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
