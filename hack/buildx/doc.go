// Package buildx proves that lazy local cache import works when users reach
// it through buildx.
//
// This module exists to pin the real buildx (the tool directive in go.mod).
// `make bin/buildx` builds it as upstream ships it, on upstream's client
// library: stock buildx. `make build` builds the same buildx again with
// this module's graph and github.com/moby/buildkit replaced by
// build/buildkit, the tree bin/buildctl is built from: our buildx,
// dist/docker-buildx, a Docker CLI plugin. It is a module of its own so
// that buildx and its dependencies stay out of the root module, its ./...
// and the binaries it builds.
//
// Most tests run one buildx (BUILDX, default bin/buildx; make test-buildx
// runs them with each) against fresh bin/buildkitd daemons through buildx's
// remote driver. The remote_test.go tests run the daemons as remote
// builders run: on TCP with TLS, reached through a loopback proxy that
// counts the bytes each way, so that what a lazy import sends across the
// link is asserted in bytes, not seconds. clients_test.go runs stock buildx
// and ours side by side where our client library changes what users get,
// and container_test.go runs ours with the docker-container driver on our
// root image, under a dockerd of its own.
package buildx
