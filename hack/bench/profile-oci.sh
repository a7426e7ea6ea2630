#!/bin/sh
# Profile buildkitd while it reads a lazily imported local cache: all steps
# cached, --output type=oci, so every layer blob is read through the
# session (docs/benchmarks.md, "Where the time goes").
#
#   hack/bench/profile-oci.sh WORKDIR [BUILDKITD...]
#
# The first run sets up WORKDIR: a base image of 7 layers of 50 MB of
# random bytes (350 MB compressed) pushed to a loopback registry, then
# build 1 of a Dockerfile FROM it, which exports a local cache (mode=max)
# and a registry cache. Each run then starts a fresh buildkitd per build
# (BUILDKITD..., default bin/buildkitd; several compare builds) with
# --debugaddr, takes a CPU profile for SECONDS while build 2 runs, and
# prints build 2's wall time for the lazy local import and for the
# registry cache import, interleaved, RUNS times, then each buildkitd's
# profile top. Environment: RUNS (3), PROFILE_SECONDS (6), REGISTRY_PORT (5091).
set -eu

[ $# -ge 1 ] || { sed -n '2,16p' "$0" >&2; exit 2; }
root=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mkdir -p "$1" && cd "$1" && pwd)
shift
[ $# -ge 1 ] || set -- "$root/bin/buildkitd"
buildctl=$root/bin/buildctl
runs=${RUNS:-3}
secs=${PROFILE_SECONDS:-6}
reg=127.0.0.1:${REGISTRY_PORT:-5091}
cfg=$work/buildkitd.toml
pids=""

cleanup() {
	for p in $pids; do
		kill "$p" 2>/dev/null || true
	done
}
trap cleanup EXIT INT TERM

# start BUILDKITD ROOT: a daemon on its own socket and debug address
start() {
	"$1" --root="$2" --config="$cfg" --addr="unix://$2.sock" --debugaddr=127.0.0.1:6072 >"$2.log" 2>&1 &
	daemon=$!
	pids="$pids $daemon"
	for _ in $(seq 200); do
		"$buildctl" --addr="unix://$2.sock" debug workers >/dev/null 2>&1 && return 0
		sleep 0.1
	done
	echo "buildkitd $1 did not start, see $2.log" >&2
	exit 1
}

stop() {
	kill "$daemon"
	while kill -0 "$daemon" 2>/dev/null; do sleep 0.1; done
}

build() {
	sock=$1
	shift
	"$buildctl" --addr="unix://$sock" build --frontend dockerfile.v0 "$@"
}

printf '[registry."%s"]\n  http = true\n  insecure = true\n[worker.oci]\n  gc = false\n' "$reg" >"$cfg"
mkdir -p "$work/registry"
printf 'version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: %s\n' \
	"$work/registry/data" "$reg" >"$work/registry/config.yml"
docker-registry serve "$work/registry/config.yml" >"$work/registry/log" 2>&1 &
pids="$pids $!"
sleep 1

if [ ! -f "$work/cache/index.json" ]; then
	rm -rf "$work/base" "$work/app" "$work/cache" "$work/setup"
	mkdir -p "$work/base/l0/bin" "$work/app"
	cp /bin/busybox "$work/base/l0/bin/busybox"
	for t in sh ls echo; do ln -s busybox "$work/base/l0/bin/$t"; done
	printf 'FROM scratch\nCOPY l0/ /\n' >"$work/base/Dockerfile"
	for i in 1 2 3 4 5 6 7; do
		mkdir -p "$work/base/l$i"
		head -c 50000000 /dev/urandom >"$work/base/l$i/data"
		printf 'COPY l%s /l%s\n' "$i" "$i" >>"$work/base/Dockerfile"
	done
	printf 'FROM %s/base\nWORKDIR /app\nRUN echo deps > STAMP\nRUN ls / > ls.txt\n' "$reg" >"$work/app/Dockerfile"
	start "$1" "$work/setup"
	build "$work/setup.sock" --local context="$work/base" --local dockerfile="$work/base" \
		--output type=image,name="$reg/base",push=true,registry.insecure=true
	build "$work/setup.sock" --local context="$work/app" --local dockerfile="$work/app" \
		--export-cache type=local,dest="$work/cache",mode=max
	build "$work/setup.sock" --local context="$work/app" --local dockerfile="$work/app" \
		--export-cache type=registry,ref="$reg/cache:b1",mode=max
	stop
fi

k=1
while [ "$k" -le "$runs" ]; do
	b=1
	for bk in "$@"; do
		for imp in lazy registry; do
			name=$imp-bk$b-$k
			r=$work/root-$name
			rm -rf "$r" "$work/out.tar"
			start "$bk" "$r"
			curl -s -o "$work/cpu-$name.pprof" "http://127.0.0.1:6072/debug/pprof/profile?seconds=$secs" &
			profiler=$!
			sleep 0.3
			if [ "$imp" = lazy ]; then
				from="type=local,src=$work/cache,lazy=true"
			else
				from="type=registry,ref=$reg/cache:b1"
			fi
			t0=$(date +%s%N)
			build "$r.sock" --local context="$work/app" --local dockerfile="$work/app" \
				--import-cache "$from" --output type=oci,dest="$work/out.tar" >"$work/build-$name.log" 2>&1
			t1=$(date +%s%N)
			echo "run $k buildkitd $b ($bk) $imp: $(((t1 - t0) / 1000000)) ms"
			wait "$profiler"
			stop
			rm -rf "$r"
		done
		b=$((b + 1))
	done
	k=$((k + 1))
done

b=1
for bk in "$@"; do
	echo "== buildkitd $b ($bk), lazy import, all runs: top"
	# shellcheck disable=SC2046
	go tool pprof -top -nodecount=12 "$bk" $(ls "$work"/cpu-lazy-bk$b-*.pprof) 2>/dev/null | sed -n '4,20p'
	b=$((b + 1))
done
