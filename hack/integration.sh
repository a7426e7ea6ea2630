# Sourced by hack/test-integration and hack/test-series: runs integration
# tests of upstream's framework on the buildkitd first in PATH, with the runc
# worker, and fails on a test that fails, is skipped or does not run.

# integration_requirements fails with what to install when something the
# tests need is missing.
integration_requirements() {
	[ "$(id -u)" = 0 ] || fail "integration tests run buildkitd with the runc worker: run them as root"
	command -v runc >/dev/null || fail "runc not found: apt-get install runc (make deps)"
	command -v sudo >/dev/null && command -v rootlesskit >/dev/null && command -v newuidmap >/dev/null ||
		fail "the oci-rootless worker needs sudo, rootlesskit and newuidmap: apt-get install sudo rootlesskit uidmap (make deps)"
	command -v registry >/dev/null || fail "registry not found: apt-get install docker-registry and link it as bin/registry (make deps)"
	[ -d "${BUILDKIT_REGISTRY_MIRROR_DIR:-}" ] || fail "BUILDKIT_REGISTRY_MIRROR_DIR is not a directory: make mirror fills one"
}

# integration_run TREE PKG WORKERS GROUP/NAME...: runs GROUP/NAME on each
# worker of WORKERS (oci, or oci,oci-rootless: upstream's CI matrix runs
# both) in TREE/PKG, and checks that each passed on every worker, under
# every variant of its matrix, and that none was skipped. The rootless
# worker runs the same buildkitd, as the user hack/rootless-user makes.
integration_run() {
	local tree=$1 pkg=$2 workers=$3
	shift 3
	local groups names re log test w bin
	command -v buildkitd >/dev/null || fail "buildkitd not in PATH"
	groups=$(printf '%s\n' "$@" | cut -d/ -f1 | sort -u | paste -sd'|')
	names=$(printf '%s\n' "$@" | cut -d/ -f2 | paste -sd'|')
	re="^($groups)\$/^($names)\$/^worker=(${workers//,/|})\$"
	log=$(mktemp)
	bin=$(mktemp -d)
	case ,$workers, in
	*,oci-rootless,*)
		# A copy the rootless user can read, first in its login PATH.
		chmod 0755 "$bin"
		cp "$(command -v buildkitd)" "$bin/"
		BUILDKIT_INTEGRATION_ROOTLESS_IDPAIR=$("$root/hack/rootless-user") || fail "no user for the oci-rootless worker"
		export BUILDKIT_INTEGRATION_ROOTLESS_IDPAIR BUILDKIT_INTEGRATION_ROOTLESS_PATH=$bin
		;;
	esac
	echo "integration: $pkg: $# tests on ${workers//,/ and } with $(buildkitd --version)"
	if ! (cd "$tree" && go test -count=1 -v -timeout 60m -run "$re" "./$pkg") >"$log" 2>&1; then
		tail -n 200 "$log" >&2
		# The assertions that failed, which the daemon logs above may bury.
		grep -E -A12 '^\s*Error Trace:' "$log" | grep -v 'level=' >&2 || true
		grep -E '^\s*--- (FAIL|SKIP)|^(FAIL|panic:)' "$log" >&2 || true
		rm -rf "$log" "$bin"
		fail "$pkg: go test failed"
	fi
	rm -rf "$bin"
	unset BUILDKIT_INTEGRATION_ROOTLESS_IDPAIR BUILDKIT_INTEGRATION_ROOTLESS_PATH
	if grep -E -- '--- SKIP' "$log" >&2; then
		rm -f "$log"
		fail "$pkg: the tests above were skipped"
	fi
	for test in "$@"; do
		for w in ${workers//,/ }; do
			grep -qE -- "--- PASS: $test/worker=$w( |/)" "$log" || { rm -f "$log"; fail "$pkg: $test did not run on worker $w"; }
		done
	done
	grep -E -- '--- PASS: [A-Za-z]+/' "$log" | sed 's/^[[:space:]]*//'
	rm -f "$log"
}

# our_integration_tests: the integration tests our pull requests and
# proposals add, one GROUP/NAME a line: the "integration:" header line of
# each series/*/cover and proposals/*/cover, TestIntegration/NAME where it
# names no group.
our_integration_tests() {
	for c in "$root"/series/*/cover "$root"/proposals/*/cover; do
		sed -n '/^$/q; s/^integration: *//p' "$c"
	done | tr ' ' '\n' | sed '/^$/d; /\//!s#^#TestIntegration/#' | sort -u
}
