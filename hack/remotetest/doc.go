// Package remotetest is the module of what the bench (hack/bench) and the
// buildx tests (hack/buildx) share to put a remote builder on loopback:
// linkproxy, the rate-limited proxy that counts what crosses the link and
// can add a one-way latency to it, and tlsfiles, the CA and certificates
// of a TLS daemon. Beyond the standard library it needs only testify, at
// the version both modules use, so that it moves no version in either
// module's graph (hack/buildx builds the buildx tool from its own).
package remotetest
