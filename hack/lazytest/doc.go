// Package lazytest is our wider integration suite for
// `--import-cache type=local,src=DIR,lazy=true`, outside the pull requests.
// It runs upstream's integration framework (util/testutil/integration, the
// runc worker) against the buildkitd first in PATH, bin/buildkitd under
// `make test-lazy`, and talks to it only through the public client API.
// Every test has a daemon of its own; base images are pushed to the
// sandbox's registry and busybox:latest comes from the mirror directory
// (BUILDKIT_REGISTRY_MIRROR_DIR), so nothing reaches the network.
//
// Which layers a build pulls is seen through a counting content store that
// serves the cache directory to the daemon as the client does. The
// "extracting" status lines are read only where a store cannot tell: the
// Dockerfile COPY --link rebuild, whose image export reads every layer
// without mounting one, and the eager concurrent-reset test, where the
// client serves the directory itself (it pins only its own store).
//
// Covered (import_test.go, session_test.go, shared_test.go,
// readonly_linux_test.go, dockerfile_test.go):
//
//   - eager import still reads every layer at load; lazy all-cached reads none
//   - a copy merged onto the cached result (COPY --link) stays lazy
//   - an uncached step on lazy layers sees exactly their files, and an OCI
//     export carries the imported blobs unchanged
//   - concurrent builds sharing vertices, each reading through its own session
//   - lazy import + mode=max export to a new directory and to the same one
//     gives a complete cache that a fresh daemon finds fully cached
//   - lazy=maybe is an import error naming the attribute
//   - a deleted blob: its step reruns, a new export does not reference it;
//     a persistent daemon whose directory lost every layer reruns too
//   - a corrupted blob fails the build that reads it, and after repair the
//     next build on the same daemon succeeds (series/02); a lazy import
//     exporting a corrupt blob fails and writes no corrupt blob
//   - linked builds: B that imports the same directory reads A's lazy layer
//     through its own session, A ended or not; B that does not import it
//     fails with "failed to read blob <digest> from local cache <dir>"
//   - shared directories (series/04): another job's reset=true export cleans
//     up while a lazy build runs, which still succeeds on the blobs its client
//     opened (and the eager counterpart); the build's own reset cleans up; a
//     read-only directory is imported lazily
//   - Dockerfile rebuilds: COPY --link reads no layer; plain COPY gives the
//     right files and layers
//   - the rotation with a lazy import (series 06 on 03): the new directory's
//     layers are hard links of the imported ones
//
// Dropped from the tests this suite replaces (commit 5190224):
//
//   - testLazyLocalCacheSessionGone: it passed on either outcome; the
//     definite outcome is testLazyLinkedBuildNoImport.
//   - testLazyLocalCacheCorruptCopyConcurrent: which of two racing builds
//     starts the shared fetch decides its outcome, nondeterministic by design.
//   - testLazyLocalCacheExportToNewDir's and ExportToNewDirCorrupt's checks
//     that blobs were linked by the client: the blob linker was removed
//     (their other checks are in testLazyRoundTrip and
//     testLazyExportCorruptBlob).
//   - assertions on the old error texts ("is corrupt", "no active session of
//     this build serves the cache directory") and on the fallback to the
//     importing session, which the design no longer has.
package lazytest
