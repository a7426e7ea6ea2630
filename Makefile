# BuildKit v0.34.2 with our cache/remotecache/local swapped in.
#
#   make build   bin/buildkitd, bin/buildctl (upstream's commands, our package)
#   make test    vet, unit tests, integration tests on a real buildkitd
#   make demo    the eager vs lazy rebuild, end to end
#
# Static binaries (CGO_ENABLED=0), as upstream's release builds, so they run in
# any image, ours included.
#
# Packages we own replace upstream's at the same import path. `go mod vendor`
# lays upstream's source out under vendor/ (generated, ignored), and
# hack/overlay maps our files over the vendored ones for `go build -overlay`.

SHELL := /bin/bash
UPSTREAM := github.com/moby/buildkit
UPSTREAM_VERSION := $(shell go list -mod=mod -m -f '{{.Version}}' $(UPSTREAM))
OWNED := cache/remotecache/local
BUILD_NUMBER := $(shell git rev-list --count HEAD 2>/dev/null || echo 0)
REVISION := $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
VERSION := $(UPSTREAM_VERSION)+lazylocal.$(BUILD_NUMBER)
LDFLAGS := -X $(UPSTREAM)/version.Version=$(VERSION) \
	-X $(UPSTREAM)/version.Revision=$(REVISION) \
	-X $(UPSTREAM)/version.Package=$(UPSTREAM)

# Our binaries first, then Debian's docker-registry under the name the
# integration framework looks for (bin/registry).
export PATH := $(CURDIR)/bin:$(PATH)

.PHONY: build deps vendor test test-unit test-integration test-patch upstream-patch vet demo clean

build: vendor
	@mkdir -p bin
	go run -mod=mod ./hack/overlay -root . -o bin/overlay.json $(OWNED)
	CGO_ENABLED=0 go build -mod=vendor -overlay bin/overlay.json -ldflags "$(LDFLAGS)" \
		-o bin/ $(UPSTREAM)/cmd/buildkitd $(UPSTREAM)/cmd/buildctl
	@bin/buildkitd --version

vendor:
	go mod vendor

deps:
	@hack/install-deps
	@mkdir -p bin
	@ln -sf "$$(command -v docker-registry)" bin/registry

vet:
	go vet -mod=mod ./...
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt: files above need formatting" >&2; exit 1; }

test-unit:
	go test -mod=mod -count=1 ./cache/... ./hack/overlay/... ./util/... ./cmd/...

# Integration tests start bin/buildkitd (first in PATH) with the runc worker
# through upstream's util/testutil/integration, one daemon per test.
test-integration: deps build
	go test -mod=mod -count=1 -timeout 30m ./client/... ./frontend/...

# The patch for upstream: dist/lazy-local-cache.patch, and a check that it
# still applies and compiles against upstream at the pin.
upstream-patch:
	hack/upstream-patch dist/lazy-local-cache.patch

test-patch: vendor
	hack/test-upstream-patch

test: deps vet test-unit build test-integration test-patch test-wrapper test-buildx

clean:
	rm -rf bin vendor dist

# demo and benchmark
#
#   make demo                                 eager vs lazy rebuilds, one table
#   make bench                                docs/benchmarks.md and .png
#   make bench BENCH_FLAGS='-size 350 -row cached,link'
DEMO_FLAGS ?=
BENCH_FLAGS ?=

.PHONY: bench

demo: deps build
	go run -mod=mod ./cmd/demo $(DEMO_FLAGS)

bench: deps build
	go run -mod=mod ./cmd/bench $(BENCH_FLAGS)

# daemonless wrapper
#
#   make install        bin/buildkitd, bin/buildctl and buildctl-daemonless.sh
#                       into $(DESTDIR)$(PREFIX)/bin (PREFIX=/usr/local)
#   make test-wrapper   the wrapper end to end: as root, and rootless as a user
#                       the test creates (run as root)

PREFIX ?= /usr/local
WRAPPER := examples/buildctl-daemonless/buildctl-daemonless.sh

.PHONY: install test-wrapper

install:
	@for f in bin/buildkitd bin/buildctl; do \
		test -x "$$f" || { echo "$$f missing: run make build first" >&2; exit 1; }; \
	done
	install -d "$(DESTDIR)$(PREFIX)/bin"
	install -m 0755 bin/buildkitd bin/buildctl $(WRAPPER) "$(DESTDIR)$(PREFIX)/bin/"

test-wrapper:
	go test -mod=mod -count=1 -v -timeout 20m ./examples/buildctl-daemonless/

# buildx passthrough
#
#   make bin/buildx    the real buildx at the version hack/buildx/go.mod pins
#   make test-buildx   buildx build and bake with lazy local cache import,
#                      against fresh bin/buildkitd daemons (run as root)
#
# hack/buildx is a module of its own: buildx is a test tool there, never part
# of the root module, its ./... or the binaries we ship.
BUILDX_VERSION = $(shell cd hack/buildx && go list -m -f '{{.Version}}' github.com/docker/buildx)

.PHONY: test-buildx

bin/buildx: hack/buildx/go.mod hack/buildx/go.sum
	@mkdir -p bin
	cd hack/buildx && go build -ldflags "-X github.com/docker/buildx/version.Version=$(BUILDX_VERSION)" \
		-o ../../bin/buildx github.com/docker/buildx/cmd/buildx
	@bin/buildx version

test-buildx: deps build bin/buildx
	cd hack/buildx && go vet ./... && go test -count=1 -v -timeout 10m ./...

# the image
#
#   make image        dist/image/buildkit.tar and buildkit-rootless.tar
#                     (docker load), dist/image/oci (an OCI layout), built by
#                     bin/buildkitd from image/Dockerfile and Debian's packages;
#                     IMAGE_PUSH=registry/name pushes instead (run as root)
#   make test-image   the images under a dockerd of the test's own: the
#                     report's docker run script, buildx's docker-container
#                     driver, and rootless without the security options
#
# image/ is a module of its own (its tests need Docker, never the root
# module's ./...).

.PHONY: image test-image

image: deps build
	@hack/install-deps image
	hack/make-image

test-image: image bin/buildx
	cd image && go vet ./... && go test -count=1 -v -timeout 20m ./...
