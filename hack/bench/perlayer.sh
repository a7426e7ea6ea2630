#!/bin/sh
# Where the per-layer cost of an all-cached rebuild goes
# (docs/benchmarks.md, "Per-layer cost of all steps cached").
#
#   hack/bench/perlayer.sh WORKDIR [LAYERS...]
#
# For each layer count (default 4 13): a Dockerfile FROM scratch with that
# many COPY steps (one small file, one layer each); build 1 on a buildkitd
# of its own exports a local cache (mode=max). Then, RUNS times (default
# 5), build 2 all cached, timed (buildctl alone):
#   warm      on build 1's daemon, no cache import or export
#   eager     fresh buildkitd, --import-cache type=local,src=DIR
#   lazy      fresh buildkitd, --import-cache type=local,src=DIR,lazy=true
#   lazy+exp  the same, also --export-cache type=local,dest=DIR,mode=max
# No base image, no registry: what grows with the layer count is the cache
# records, not their bytes.
set -eu

[ $# -ge 1 ] || { sed -n '2,15p' "$0" >&2; exit 2; }
root=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mkdir -p "$1" && cd "$1" && pwd)
shift
[ $# -ge 1 ] || set -- 4 13
runs=${RUNS:-5}
bin=$root/bin

start() { # name
	"$bin/buildkitd" --root="$work/$1" --addr="unix://$work/$1.sock" >"$work/$1.log" 2>&1 &
	echo $! >"$work/$1.pid"
	i=0
	until "$bin/buildctl" --addr="unix://$work/$1.sock" debug workers >/dev/null 2>&1; do
		i=$((i + 1))
		[ $i -lt 200 ] || { echo "buildkitd $1 did not start: $work/$1.log" >&2; exit 1; }
		sleep 0.05
	done
}
stop() { # name
	kill "$(cat "$work/$1.pid")"
	while kill -0 "$(cat "$work/$1.pid")" 2>/dev/null; do sleep 0.05; done
}
build() { # name ctx [buildctl build args...]; prints seconds
	d=$1 ctx=$2
	shift 2
	s=$(date +%s%N)
	"$bin/buildctl" --addr="unix://$work/$d.sock" build --frontend dockerfile.v0 \
		--local context="$ctx" --local dockerfile="$ctx" "$@" >"$work/$d.out" 2>&1 ||
		{ cat "$work/$d.out" >&2; exit 1; }
	e=$(date +%s%N)
	echo "$(((e - s) / 1000000))"
}

for n in "$@"; do
	ctx=$work/ctx$n
	rm -rf "$ctx" "$work/cache$n"
	mkdir -p "$ctx"
	echo "FROM scratch" >"$ctx/Dockerfile"
	i=0
	while [ $i -lt "$n" ]; do
		echo "layer $i" >"$ctx/f$i"
		echo "COPY f$i /f$i" >>"$ctx/Dockerfile"
		i=$((i + 1))
	done
	start warm$n
	build warm$n "$ctx" --export-cache "type=local,dest=$work/cache$n,mode=max" >/dev/null
done

printf '%-7s %-9s %s\n' layers build "ms, $runs runs"
for n in "$@"; do
	ctx=$work/ctx$n
	warm="" eager="" lazy="" exp=""
	r=0
	while [ $r -lt "$runs" ]; do
		warm="$warm $(build warm$n "$ctx")"
		rm -rf "$work/fresh"
		start fresh
		eager="$eager $(build fresh "$ctx" --import-cache "type=local,src=$work/cache$n")"
		stop fresh
		rm -rf "$work/fresh"
		start fresh
		lazy="$lazy $(build fresh "$ctx" --import-cache "type=local,src=$work/cache$n,lazy=true")"
		grep -q CACHED "$work/fresh.out" || { echo "build 2 was not cached: $work/fresh.out" >&2; exit 1; }
		stop fresh
		rm -rf "$work/fresh"
		start fresh
		exp="$exp $(build fresh "$ctx" --import-cache "type=local,src=$work/cache$n,lazy=true" --export-cache "type=local,dest=$work/cache$n,mode=max")"
		stop fresh
		r=$((r + 1))
	done
	printf '%-7s %-9s%s\n' "$n" warm "$warm" "$n" eager "$eager" "$n" lazy "$lazy" "$n" lazy+exp "$exp"
done
for n in "$@"; do stop warm$n; done
