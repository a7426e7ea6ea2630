# BuildKit with lazy local cache import.
#
#   make build           build/buildkit: upstream's source at the pin with our
#                        series applied (hack/tree); bin/buildkitd and
#                        bin/buildctl built from it, and dist/docker-buildx:
#                        buildx on the same client library, a Docker CLI
#                        plugin (see buildx-plugin below)
#   make test            everything below, on a real buildkitd with runc
#   make test-lazy       our wider suite of lazy=true (hack/lazytest)
#   make test-stress     concurrent lazy imports of one directory while builds
#                        reset and rotate it (hack/bench/cmd/stress)
#   make upstream-patch  dist/patches/NN-name/: each of our pull requests
#                        (series/NN-name) as we send it upstream: its cover
#                        letter and git format-patch of its commits
#   make demo, bench     eager vs lazy rebuilds (hack/bench), beside
#                        upstream's unchanged binaries (make build-others)
#
# The repository keeps only what we wrote: our files at upstream's paths,
# *.diff files for the upstream files we edit, and series/: one directory
# per pull request, its cover text and its commits, which name those files.
# Every Go test of the patch runs inside build/buildkit, the tree the patch
# is made from. Our own wider tests live in modules under hack/, daemonless/
# and image/, outside the pull requests.

SHELL := /bin/bash
BUILDKIT_VERSION := v0.34.2
export BUILDKIT_VERSION
TREE := build/buildkit
MIRROR := $(CURDIR)/build/mirror
PKG := github.com/moby/buildkit
BUILD_NUMBER := $(shell git rev-list --count HEAD 2>/dev/null || echo 0)
REVISION := $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
VERSION := $(BUILDKIT_VERSION)+lazylocal.$(BUILD_NUMBER)
LDFLAGS := -X $(PKG)/version.Version=$(VERSION) \
	-X $(PKG)/version.Revision=$(REVISION) \
	-X $(PKG)/version.Package=$(PKG)

# Our binaries first, then Debian's docker-registry under the name the
# integration framework looks for (bin/registry).
export PATH := $(CURDIR)/bin:$(PATH)

.PHONY: tree build deps mirror vet test test-unit test-race-unit test-integration test-race-integration test-series test-lazy upstream-patch clean

tree:
	@hack/tree $(TREE)

# Static (CGO_ENABLED=0), as upstream's release binaries, so that they run in
# any image, ours included.
build: tree
	@mkdir -p bin
	cd $(TREE) && CGO_ENABLED=0 go build -ldflags "$(LDFLAGS)" -o $(CURDIR)/bin/ ./cmd/buildkitd ./cmd/buildctl
	@bin/buildkitd --version
	@$(MAKE) --no-print-directory buildx-plugin

deps:
	@hack/install-deps
	@mkdir -p bin
	@ln -sf "$$(command -v docker-registry)" bin/registry

# Offline stand-ins for the images upstream's integration tests mirror
# (busybox:latest, ...), in the registry directory the framework reads
# (BUILDKIT_REGISTRY_MIRROR_DIR).
mirror: deps
	cd hack/testimages && go run . -dir $(MIRROR)

vet: tree
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt: files above need formatting" >&2; exit 1; }
	@# -lostcancel: upstream's own local.go discards a cancel func (nolint there).
	cd $(TREE) && go vet -lostcancel=false ./cache/ ./cache/remotecache/ ./cache/remotecache/v1/ ./cache/remotecache/local/ ./util/contentutil/ ./client/ ./cmd/buildkitd/ ./cmd/buildkitd/config/
	for m in hack/bench hack/remotetest hack/testimages hack/lazytest hack/docscheck hack/buildclient daemonless image; do (cd $$m && go vet ./...) || exit 1; done

# Unit tests of the packages the series touches, in the tree, and of our
# tools.
UNIT_PKGS := ./cache/ ./cache/remotecache/ ./cache/remotecache/v1/ ./cache/remotecache/local/ ./util/contentutil/ ./cmd/buildkitd/config/
INTEGRATION_SKIP := ^Test[A-Za-z]*Integration$$

# The unpack tests of cache/ skip for non-root, as upstream's do: here that
# is a failure.
test-unit: tree
	@[ "$$(id -u)" = 0 ] || { echo "test-unit: cache/'s unpack tests mount overlayfs and chown: run make test as root" >&2; exit 1; }
	cd $(TREE) && go test -count=1 $(UNIT_PKGS)
	cd $(TREE) && go test -count=1 -skip '$(INTEGRATION_SKIP)' ./client/
	for m in hack/bench hack/remotetest hack/testimages hack/docscheck; do (cd $$m && go test -count=1 ./...) || exit 1; done

# The same unit tests with the race detector, as upstream's CI runs them.
test-race-unit: tree
	@[ "$$(id -u)" = 0 ] || { echo "test-race-unit: cache/'s unpack tests mount overlayfs and chown: run make test as root" >&2; exit 1; }
	cd $(TREE) && go test -race -count=1 $(UNIT_PKGS)
	cd $(TREE) && go test -race -count=1 -skip '$(INTEGRATION_SKIP)' ./client/

# The integration tests our pull requests add and upstream's client cache
# tests (hack/upstream-cache-tests.txt), in the tree, on bin/buildkitd with
# the runc worker; a skipped test fails the run.
test-integration: deps build mirror
	BUILDKIT_REGISTRY_MIRROR_DIR=$(MIRROR) hack/test-integration $(TREE)

# Each pull request as we send it, authored and signed off by your git
# identity (it stops when none is set, or it is a placeholder); and a check,
# on patches signed by a test identity, that each applies to upstream's
# source at the pin with git am (alone or on the PR its cover names as
# base), builds and passes its unit tests at every commit and its
# integration tests on its own build, and that in order they give the tree
# we test.
upstream-patch: tree
	hack/upstream-patch $(TREE) dist/patches

test-series: deps mirror tree
	BUILDKIT_REGISTRY_MIRROR_DIR=$(MIRROR) hack/test-series $(TREE)

# Our wider suite of lazy=true (hack/lazytest, see its doc.go), outside the
# pull requests: upstream's integration framework on bin/buildkitd with the
# runc worker; a skipped test fails the run.
test-lazy: deps build mirror
	BUILDKIT_REGISTRY_MIRROR_DIR=$(MIRROR) hack/test-lazy hack/lazytest

# Our PRs' integration tests once more, on a buildkitd built with the race
# detector, with eager and lazy imports beside them; a race whose stacks
# reach a line the series adds or changes fails the run
# (hack/test-race-integration).
test-race-integration: deps build mirror
	BUILDKIT_REGISTRY_MIRROR_DIR=$(MIRROR) hack/test-race-integration $(TREE)

test: deps vet test-unit test-race-unit build test-docs test-integration test-race-integration test-series test-lazy test-wrapper test-buildx test-buildclient test-stress test-image

# Every file path, make target, environment variable and test name that
# the README, docs/ and the covers name exists (hack/docscheck).
DOCS = README.md CONTRIBUTING.md $(wildcard docs/*.md) $(wildcard series/*/cover) $(wildcard proposals/*/cover)

.PHONY: test-docs

test-docs: tree
	go -C hack/docscheck run . -repo $(CURDIR) -tree $(CURDIR)/$(TREE) $(DOCS)

clean:
	rm -rf bin build dist

# demo and benchmark
#
#   make demo                                 eager vs lazy rebuilds, one table,
#                        with upstream's unchanged binaries' eager rebuild beside
#   make bench                                docs/benchmarks.md and .png
#   make bench BENCH_FLAGS='-size 350 -row cached,link'
#   make bench BENCH_FLAGS='-size 350 -row remote'   a remote builder (TCP,
#                        TLS) behind a link of -rate MB/s (default 25) and
#                        -rtt (default 0), built by bin/buildclient, which
#                        counts the requests the client served; prints its
#                        table, writes no report
#   make bench BENCH_FLAGS='-row unpack'      extracting a layer chain: build 2
#                        of the report's Dockerfile (rootful), a cold FROM + RUN,
#                        the same from a zstd cache, on ours, bin/baseline and
#                        bin/upstream side by side (-size 350, -runs 3; 20
#                        minutes with the rootless row on a quiet 2-core VM);
#                        prints its tables, writes -md FILE if given
#   make bench BENCH_FLAGS='-row unpack -unpack report,rootless'   adds build 2
#                        in our rootless image (make image first)
#   make bench BENCH_FLAGS='-size 350 -row clients'  the export to a new
#                        directory by client (buildctl, bin/buildx,
#                        dist/docker-buildx) and on a remote builder; prints
#                        its tables, writes no report
#
# make bench and make demo run other daemons beside bin/ (make build-others,
# hack/build-tag: each built once from a tag of the tree, in build/tags/):
#   bin/upstream/   upstream's unchanged buildkitd and buildctl at the pin
#   bin/baseline/   the series up to BASELINE_TAG, by default before/05: every
#                   PR below 05, main's daemon beside PR 05 (the parallel
#                   unpack); the same code as bin/ while series/ has no PR 05
DEMO_FLAGS ?=
BENCH_FLAGS ?=
BASELINE_TAG ?= before/05

.PHONY: demo bench build-others

build-others: tree
	@hack/build-tag $(TREE) upstream $(CURDIR)/bin/upstream
	@hack/build-tag $(TREE) $(BASELINE_TAG) $(CURDIR)/bin/baseline

demo: deps build build-others
	cd hack/bench && go run ./cmd/demo $(DEMO_FLAGS)

# hack/install-deps bench: igzip and unpigz, which -row unpack decompresses
# gzip layers with (-gunzip), as our images do.
bench: deps build build-others bin/buildclient bin/buildx
	@hack/install-deps bench
	cd hack/bench && go run ./cmd/bench $(BENCH_FLAGS)

# build client
#
#   bin/buildclient         `buildctl build` that also reports the build's
#                           wall time and the requests its session served,
#                           per gRPC method (hack/buildclient, the bench's
#                           remote row)
#   make test-buildclient   its counts against counting content stores, on
#                           fresh bin/buildkitd daemons (run as root)
#
# A module of its own, built against build/buildkit as hack/lazytest is.

.PHONY: bin/buildclient test-buildclient

bin/buildclient: tree
	@mkdir -p bin
	cd hack/buildclient && CGO_ENABLED=0 go build -o ../../bin/buildclient .

test-buildclient: deps build
	cd hack/buildclient && go vet ./... && go test -count=1 -v -timeout 10m ./...

# Stress: rounds of concurrent builds on two buildkitd daemons, all
# importing one local cache directory with lazy=true while some export into
# it with reset=true and others rotate it (GitHub Actions' rm -rf DIR && mv
# DIR-new DIR). It checks correctness, not speed, so make test runs it: a
# build must succeed with the right files or fail with a documented error;
# a hang, gRPC's "closing" error, a wrong file or a crashed buildkitd fail
# it. About a minute on a 2-core machine.
#
#   make test-stress STRESS_FLAGS='-builds 8 -rounds 10'
#   make test-stress STRESS_FLAGS=-lazy=false      the same with eager import
STRESS_FLAGS ?=

.PHONY: test-stress

test-stress: deps build
	cd hack/bench && go run ./cmd/stress $(STRESS_FLAGS)

# daemonless wrapper
#
#   make install        bin/buildkitd, bin/buildctl and buildctl-daemonless.sh
#                       into $(DESTDIR)$(PREFIX)/bin (PREFIX=/usr/local)
#   make test-wrapper   the wrapper end to end: as root, and rootless as a user
#                       the test creates (run as root)

PREFIX ?= /usr/local
WRAPPER := daemonless/buildctl-daemonless.sh

.PHONY: install test-wrapper

install:
	@for f in bin/buildkitd bin/buildctl; do \
		test -x "$$f" || { echo "$$f missing: run make build first" >&2; exit 1; }; \
	done
	install -d "$(DESTDIR)$(PREFIX)/bin"
	install -m 0755 bin/buildkitd bin/buildctl $(WRAPPER) "$(DESTDIR)$(PREFIX)/bin/"

test-wrapper: deps build
	cd daemonless && go test -count=1 -v -timeout 20m ./...

# buildx passthrough
#
#   make bin/buildx    the real buildx at the version hack/buildx/go.mod pins
#   make test-buildx   buildx build and bake with lazy local cache import,
#                      against fresh bin/buildkitd daemons (run as root), and
#                      remote builders: daemons on TCP with TLS behind a proxy
#                      that counts the bytes on the link, one node and two;
#                      with stock buildx and with ours (dist/docker-buildx)
#
# hack/buildx is a module of its own: stock buildx is a test tool there;
# dist/docker-buildx, the same buildx built on our client library, is what
# we ship to buildx users.
BUILDX_VERSION = $(shell cd hack/buildx && go list -m -f '{{.Version}}' github.com/docker/buildx)

.PHONY: test-buildx

bin/buildx: hack/buildx/go.mod hack/buildx/go.sum
	@mkdir -p bin
	cd hack/buildx && go build -ldflags "-X github.com/docker/buildx/version.Version=$(BUILDX_VERSION)" \
		-o ../../bin/buildx github.com/docker/buildx/cmd/buildx
	@bin/buildx version

# Our buildx: the same buildx, at the version hack/buildx/go.mod pins, built
# on the client library of $(TREE), the tree bin/buildctl is built from, so
# that buildx users get what our client does (series 04's pinning, 06's
# linking). A Docker CLI plugin, static like buildx's releases:
#
#   install -D -m 0755 dist/docker-buildx ~/.docker/cli-plugins/docker-buildx
#   docker buildx version     # github.com/docker/buildx v0.38.2+lazylocal.N ...
#
# The module graph is hack/buildx's (build/buildx-ours.mod is its go.mod
# with a replace of github.com/moby/buildkit by $(TREE), whose go.mod is
# upstream's at the pin, which buildx requires: same versions, same go.sum).
OURS_BUILDX_VERSION = $(BUILDX_VERSION)+lazylocal.$(BUILD_NUMBER)
OURS_BUILDX_MOD := $(CURDIR)/build/buildx-ours.mod

.PHONY: buildx-plugin

buildx-plugin:
	@mkdir -p dist build
	cp hack/buildx/go.mod $(OURS_BUILDX_MOD) && cp hack/buildx/go.sum $(OURS_BUILDX_MOD:.mod=.sum)
	go mod edit -replace $(PKG)=$(CURDIR)/$(TREE) $(OURS_BUILDX_MOD)
	cd hack/buildx && CGO_ENABLED=0 go build -modfile=$(OURS_BUILDX_MOD) \
		-ldflags "-X github.com/docker/buildx/version.Version=$(OURS_BUILDX_VERSION) -X github.com/docker/buildx/version.Revision=$(REVISION) $(LDFLAGS)" \
		-o ../../dist/docker-buildx github.com/docker/buildx/cmd/buildx
	@dist/docker-buildx version

# The tests that name no client run with stock buildx (bin/buildx), then
# again with ours (dist/docker-buildx). TestClientsDiffer runs the two side
# by side where our client library changes what users get (series 04's
# pinning, 06's linking) and logs a table of what differs;
# TestContainerRotation runs the GitHub Actions guide's cache rotation with
# ours on the docker-container driver and our root image (make image).
test-buildx: deps build bin/buildx image
	cd hack/buildx && go vet ./... && go test -count=1 -v -timeout 30m ./...
	cd hack/buildx && BUILDX=$(CURDIR)/dist/docker-buildx go test -count=1 -v -timeout 20m \
		-skip '^Test(ClientsDiffer|ContainerRotation)$$' ./...

# the image
#
#   make image        dist/image/buildkit.tar and buildkit-rootless.tar
#                     (docker load, this machine's platform), dist/image/oci
#                     (an OCI layout: one index per image, linux/amd64 and
#                     linux/arm64), built by bin/buildkitd from
#                     image/Dockerfile and Debian's packages;
#                     IMAGE_PUSH=registry/name pushes instead (run as root)
#   make test-image   the images under a dockerd of the test's own: the
#                     report's docker run script, buildx's docker-container
#                     driver, rootless without the security options, git,
#                     xz, igzip and unpigz in both images, and the arm64 images
#                     under qemu-user
#
# image/ is a module of its own: its tests need Docker.

.PHONY: image test-image

# The image's platforms (IMAGE_PLATFORMS, as make-image reads it): this
# machine's binaries are bin/buildkitd and bin/buildctl; every other
# architecture's are built from the same tree, static, into bin/linux-ARCH/.
IMAGE_PLATFORMS ?= linux/amd64,linux/arm64
export IMAGE_PLATFORMS
comma := ,
HOST_ARCH := $(shell go env GOARCH)
IMAGE_ARCHES := $(filter-out $(HOST_ARCH),$(subst linux/,,$(subst $(comma), ,$(IMAGE_PLATFORMS))))

.PHONY: build-cross

build-cross: tree
	@for arch in $(IMAGE_ARCHES); do \
		echo "building bin/linux-$$arch/buildkitd, buildctl (GOARCH=$$arch)"; \
		(cd $(TREE) && CGO_ENABLED=0 GOOS=linux GOARCH=$$arch go build -ldflags "$(LDFLAGS)" -o $(CURDIR)/bin/linux-$$arch/ ./cmd/buildkitd ./cmd/buildctl) || exit 1; \
	done

image: deps build build-cross
	@hack/install-deps image
	hack/make-image

test-image: image bin/buildx
	cd image && go vet ./... && go test -count=1 -v -timeout 20m ./...
