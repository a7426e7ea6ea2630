// Command buildclient runs one build as `buildctl build` does and reports
// what the build asked of the client: the wall time of the build and the
// number of requests the client's session served, per gRPC method
// (containerd.services.content.v1.Content/Info, .../Read, .../Write,
// moby.filesync.v1.FileSync/DiffCopy, ...). buildctl cannot tell; the bench
// (hack/bench, -row remote) uses it to count the Info requests a lazily
// imported local cache costs on a remote builder.
//
//	buildclient --addr tcp://127.0.0.1:PORT --tlsservername NAME \
//		--tlscacert ca.pem --tlscert client.pem --tlskey client-key.pem \
//		build --progress=plain --frontend dockerfile.v0 \
//		--local context=DIR --local dockerfile=DIR \
//		--import-cache type=local,src=CACHE,lazy=true \
//		--export-cache type=local,dest=CACHE,mode=max \
//		--report report.json
//
// The command line is buildctl's, so that a caller swaps one binary for
// the other: its global flags, build, the build flags it knows, with the
// same meaning; progress goes to stderr, plain. --report (default stdout)
// is its own. The requests are counted without any
// change to the client library: client.Solve creates its session with the
// caller's span context, and session.NewSession then serves the session
// with an OpenTelemetry stats handler of that span's tracer provider; ours
// samples every span and counts the server spans by name.
//
// --serve-cache is the check of that count: the client serves the local
// cache directories through a session of its own (SolveOpt.SharedSession,
// as buildx does) whose content store counts its own calls by the gRPC
// method that made them; the report then holds both counts, which must
// agree. It skips what client.Solve adds around a local cache on the
// client's side (the export lock, the pins of a lazy import), so the
// bench uses the default mode.
//
// It is a module of its own: its tests start bin/buildkitd.
package main
