#!/bin/sh
# shellcheck disable=SC2317 # shellcheck 0.9 takes functions run by trap for dead code
# buildctl-daemonless.sh runs one buildctl command against a buildkitd of its
# own: it starts the daemon, waits until it answers, runs
#
#   buildctl --addr=<that daemon> "$@"
#
# and stops the daemon again, returning buildctl's exit status. On SIGINT,
# SIGTERM or SIGHUP it cancels buildctl and exits with 128+signal. Whatever the
# exit path, the daemon is stopped and waited for before the script ends.
#
# As root, buildkitd runs directly. Otherwise it runs under RootlessKit
# (Debian: apt-get install rootlesskit uidmap; the user needs ranges in
# /etc/subuid and /etc/subgid), as in the moby/buildkit:rootless image.
#
# Each run keeps its socket, log and state (--root) in a directory of its own
# under ${TMPDIR:-/tmp}, removed on exit, so runs can overlap and each daemon
# starts empty, which is what `--import-cache type=local,...,lazy=true` is for.
#
# Environment (the names upstream's script uses):
#   BUILDCTL                      buildctl command (default: buildctl)
#   BUILDKITD                     buildkitd command (default: buildkitd)
#   BUILDKITD_FLAGS               extra buildkitd flags, split on blanks; they
#                                 come after ours, so e.g. --root=DIR keeps the
#                                 daemon's state in DIR across runs
#   ROOTLESSKIT                   rootlesskit command, split on blanks, e.g.
#                                 "rootlesskit --net=slirp4netns --copy-up=/etc
#                                 --disable-host-loopback" (default: rootlesskit)
#   BUILDCTL_CONNECT_RETRIES_MAX  how many more times to try reaching the new
#                                 daemon before giving up (default: 10, about
#                                 5 seconds)
# and one of ours:
#   BUILDKITD_STOP_TIMEOUT        seconds to wait for buildctl and buildkitd to
#                                 stop before killing them (default: 30)
#
# Rootless in a container (our rootless image under Docker) needs
#   --security-opt seccomp=unconfined --security-opt apparmor=unconfined
# for RootlessKit to make a user namespace, and, for RUN steps to mount
# /proc, --security-opt systempaths=unconfined (or
# BUILDKITD_FLAGS=--oci-worker-no-process-sandbox where /proc must stay
# masked, as on Kubernetes). When one is missing the script says which.
#
# POSIX sh: runs with dash, bash and BusyBox ash.
set -eu
# Flags and commands are split on blanks on purpose; never glob them.
set -f

: "${BUILDCTL:=buildctl}"
: "${BUILDKITD:=buildkitd}"
: "${BUILDKITD_FLAGS:=}"
: "${ROOTLESSKIT:=rootlesskit}"
: "${BUILDCTL_CONNECT_RETRIES_MAX:=10}"
: "${BUILDKITD_STOP_TIMEOUT:=30}"

prog=${0##*/}
rootless=false
if [ "$(id -u)" != 0 ]; then
	rootless=true
fi

say() {
	echo "$prog: $*" >&2
}

# need checks that the command line $2, the value of $1, starts with
# something runnable, and otherwise fails with the hint $3.
need() {
	need_var=$1
	need_hint=$3
	# shellcheck disable=SC2086 # the first word is the command
	set -- $2
	if [ "$#" = 0 ] || ! command -v "$1" >/dev/null 2>&1; then
		say "${1:-(empty)} not found (from $need_var); $need_hint"
		exit 127
	fi
}

# need_count checks that $2, the value of $1, is a whole number.
need_count() {
	case $2 in
	'' | *[!0-9]*)
		say "$1=$2: want a whole number"
		exit 2
		;;
	esac
}

need BUILDCTL "$BUILDCTL" "put buildctl in PATH or set BUILDCTL"
need BUILDKITD "$BUILDKITD" "put buildkitd in PATH or set BUILDKITD"
if [ "$rootless" = true ]; then
	need ROOTLESSKIT "$ROOTLESSKIT" \
		"running buildkitd as non-root needs RootlessKit: install rootlesskit and uidmap (Debian: apt-get install rootlesskit uidmap), or run as root"
fi
need_count BUILDCTL_CONNECT_RETRIES_MAX "$BUILDCTL_CONNECT_RETRIES_MAX"
need_count BUILDKITD_STOP_TIMEOUT "$BUILDKITD_STOP_TIMEOUT"

# seccomp_filtered tells whether this process runs under a seccomp filter,
# as in a container with Docker's default profile, which keeps RootlessKit
# from making a user namespace.
seccomp_filtered() {
	[ "$(sed -n 's/^Seccomp:[[:space:]]*//p' /proc/self/status 2>/dev/null)" = 2 ]
}

# proc_masked tells whether /proc is partly masked (Docker without
# systempaths=unconfined, Kubernetes), so that a rootless buildkitd's RUN
# steps cannot mount proc unless it runs them without a process sandbox.
proc_masked() {
	case " $BUILDKITD_FLAGS " in
	*" --oci-worker-no-process-sandbox "* | *" --oci-worker-no-process-sandbox=true "*) return 1 ;;
	esac
	awk '$5 == "/proc/kcore" || $5 == "/proc/sys" { found = 1 } END { exit !found }' \
		/proc/self/mountinfo 2>/dev/null
}

if [ "$rootless" = true ] && proc_masked; then
	proc_hint="--security-opt systempaths=unconfined (RUN steps mount /proc; or set BUILDKITD_FLAGS=--oci-worker-no-process-sandbox)"
else
	proc_hint=
fi

tmp=
daemon_pid=
client_pid=
client_done=false

# running tells whether the child $1 still runs. A child that exited stays a
# zombie, which kill -0 still finds, until the shell waits for it.
running() {
	state=$(sed -n 's/.*) \(.\).*/\1/p' "/proc/$1/stat" 2>/dev/null) || return 1
	[ -n "$state" ] && [ "$state" != Z ]
}

# reap waits for the child $1 until it is gone, also when a trapped signal
# interrupts the wait.
reap() {
	while kill -0 "$1" 2>/dev/null; do
		rc=0
		wait "$1" 2>/dev/null || rc=$?
		if [ "$rc" = 127 ]; then
			# not our child (any more): nothing left to wait for
			return
		fi
	done
}

show_log() {
	say "$1; buildkitd's log follows"
	echo "========== buildkitd log ==========" >&2
	cat "$tmp/buildkitd.log" >&2 || :
	echo "===================================" >&2
}

# unmount_leftovers detaches what a daemon that died mid-build left mounted
# under $tmp (as root, snapshots are mounted in the host's mount namespace;
# rootless ones vanish with RootlessKit's namespace).
unmount_leftovers() {
	[ -r /proc/self/mountinfo ] || return 0
	awk -v dir="$tmp/" 'index($5, dir) == 1 { print $5 }' /proc/self/mountinfo |
		sort -r | while read -r m; do
		umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || say "could not unmount $m"
	done
}

# stop waits up to BUILDKITD_STOP_TIMEOUT seconds for the child $1 (named
# $2), which has been asked to stop, then kills it, and reaps it.
stop() {
	ticks=0
	while running "$1"; do
		if [ "$ticks" -ge $((BUILDKITD_STOP_TIMEOUT * 10)) ]; then
			say "$2 did not stop within ${BUILDKITD_STOP_TIMEOUT}s (BUILDKITD_STOP_TIMEOUT); killing it, so steps it ran may outlive it"
			kill -s KILL "$1" 2>/dev/null
			break
		fi
		sleep 0.1
		ticks=$((ticks + 1))
	done
	reap "$1"
}

cleanup() {
	status=$?
	set +e
	# Finish cleaning up: a second Ctrl-C would only leave pieces behind,
	# and stop bounds the wait.
	trap '' HUP INT TERM
	if [ -n "$client_pid" ]; then
		stop "$client_pid" buildctl
	fi
	if [ -n "$daemon_pid" ]; then
		if [ "$client_done" = true ] && [ "$status" != 0 ] && ! running "$daemon_pid"; then
			show_log "buildkitd exited while buildctl ran"
		fi
		kill -s TERM "$daemon_pid" 2>/dev/null
		stop "$daemon_pid" buildkitd
	fi
	if [ -n "$tmp" ]; then
		unmount_leftovers
		if ! rm -rf "$tmp" 2>/dev/null && [ "$rootless" = true ]; then
			# Steps that ran as a non-root user of a container left files
			# owned by our subordinate IDs: only root in a user namespace
			# with the same mapping may delete them.
			# shellcheck disable=SC2086 # ROOTLESSKIT is a command line
			$ROOTLESSKIT rm -rf "$tmp" >/dev/null 2>&1
		fi
		if [ -e "$tmp" ]; then
			say "could not remove $tmp"
		fi
	fi
	exit "$status"
}

# on_signal cancels buildctl and exits; cleanup then waits for buildctl and
# stops the daemon. SIGTERM, because the shell starts a background job with
# SIGINT ignored.
on_signal() {
	if [ -n "$client_pid" ]; then
		kill -s TERM "$client_pid" 2>/dev/null || :
	fi
	exit "$1"
}

trap cleanup EXIT
trap 'on_signal 129' HUP
trap 'on_signal 130' INT
trap 'on_signal 143' TERM

tmp=$(mktemp -d "${TMPDIR:-/tmp}/buildctl-daemonless.XXXXXX")
sock="$tmp/buildkitd.sock"
addr="unix://$sock"
# buildkitd (containerd's listener) refuses longer socket paths.
if [ "${#sock}" -gt 104 ]; then
	say "socket path $sock is longer than the 104 bytes buildkitd accepts; set TMPDIR to a shorter directory"
	exit 1
fi

# Our flags come first: buildkitd keeps the last of a single-valued flag, so
# BUILDKITD_FLAGS can override --root and --otel-socket-path, while --addr
# adds a listener and ours always exists. The default OTEL socket is shared
# by all daemons (/run/buildkit or $XDG_RUNTIME_DIR/buildkit).
daemon_flags="--addr=$addr --root=$tmp/root --otel-socket-path=$tmp/otel-grpc.sock $BUILDKITD_FLAGS"
if [ "$rootless" = true ]; then
	# rootless runc keeps container state in $XDG_RUNTIME_DIR/runc; the
	# caller's may be unset or someone else's (su, runuser, CI).
	mkdir -m 0700 "$tmp/run"
	# --pidns: buildkitd is pid 1 of its own PID namespace, so when it
	# exits the kernel ends every step container it leaves; stopping it on
	# Ctrl-C does not wait for them.
	# shellcheck disable=SC2086 # commands and flags are split on purpose
	XDG_RUNTIME_DIR="$tmp/run" $ROOTLESSKIT --pidns $BUILDKITD $daemon_flags \
		</dev/null >"$tmp/buildkitd.log" 2>&1 &
else
	# shellcheck disable=SC2086 # commands and flags are split on purpose
	$BUILDKITD $daemon_flags </dev/null >"$tmp/buildkitd.log" 2>&1 &
fi
daemon_pid=$!

tries=0
delay=1
# shellcheck disable=SC2086 # BUILDCTL is a command line
until $BUILDCTL --addr="$addr" debug workers >/dev/null 2>&1; do
	if ! running "$daemon_pid"; then
		if [ "$rootless" = true ] && seccomp_filtered; then
			show_log "RootlessKit could not start buildkitd: this container's seccomp profile does not let it make a user namespace; run the container with --security-opt seccomp=unconfined --security-opt apparmor=unconfined${proc_hint:+ and $proc_hint}"
		else
			show_log "buildkitd exited before it accepted connections on $addr"
		fi
		exit 1
	fi
	if [ "$tries" -ge "$BUILDCTL_CONNECT_RETRIES_MAX" ]; then
		show_log "buildkitd did not answer on $addr after $tries retries (BUILDCTL_CONNECT_RETRIES_MAX=$BUILDCTL_CONNECT_RETRIES_MAX)"
		exit 1
	fi
	# back off 0.1s, 0.2s, ... up to 1s between tries
	sleep "$((delay / 10)).$((delay % 10))"
	if [ "$delay" -lt 10 ]; then
		delay=$((delay + 1))
	fi
	tries=$((tries + 1))
done

# buildctl runs in the background so that a signal reaches our trap at once,
# not after buildctl ends. A background job's stdin is /dev/null unless
# redirected; `... | buildctl-daemonless.sh build` passes LLB on it.
exec 3<&0
# shellcheck disable=SC2086 # BUILDCTL is a command line
$BUILDCTL --addr="$addr" "$@" <&3 3<&- &
client_pid=$!
exec 3<&-
status=0
wait "$client_pid" || status=$?
client_done=true
if [ "$status" != 0 ] && [ -n "$proc_hint" ]; then
	say "/proc is masked in this container, so RUN steps fail to mount it; run the container with $proc_hint"
fi
exit "$status"
