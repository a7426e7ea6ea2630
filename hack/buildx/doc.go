// Package buildx proves that lazy local cache import works when users reach
// it through buildx.
//
// This module exists to pin the real buildx as a test tool (the tool
// directive in go.mod; `make bin/buildx` builds it). It is a module of its
// own so that buildx and its dependencies stay out of the root module, its
// ./... and the binaries it builds. Its tests run bin/buildx against fresh
// bin/buildkitd daemons through buildx's remote driver; no Docker engine is
// involved. The remote_test.go tests run the daemons as remote builders
// run: on TCP with TLS, reached through a loopback proxy that counts the
// bytes each way, so that what a lazy import sends across the link is
// asserted in bytes, not seconds.
package buildx
