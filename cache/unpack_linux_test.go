package cache

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/diff"
	"github.com/containerd/containerd/v2/core/diff/apply"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/labels"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/plugins/snapshots/native"
	"github.com/containerd/containerd/v2/plugins/snapshots/overlay"
	"github.com/containerd/continuity/sysx"
	"github.com/moby/buildkit/util/winlayers"
	digest "github.com/opencontainers/go-digest"
	ocispecs "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/stretchr/testify/require"
)

// headerTime is the mtime of every entry of the test layers: a directory
// whose mtime is later was modified while a layer was applied.
var headerTime = time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)

func dir(name string, mode int64, uid, gid int, xattrs ...string) tar.Header {
	h := tar.Header{Name: name + "/", Typeflag: tar.TypeDir, Mode: mode, Uid: uid, Gid: gid}
	for i := 0; i+1 < len(xattrs); i += 2 {
		if h.PAXRecords == nil {
			h.PAXRecords = map[string]string{}
		}
		h.PAXRecords["SCHILY.xattr."+xattrs[i]] = xattrs[i+1]
	}
	return h
}

func reg(name string) tar.Header {
	return tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0644}
}

func link(name string, typ byte, target string) tar.Header {
	return tar.Header{Name: name, Typeflag: typ, Linkname: target, Mode: 0777}
}

// layerBlob returns a gzip layer of the entries; a regular file holds its
// own name.
func layerBlob(t *testing.T, entries ...tar.Header) ([]byte, ocispecs.Descriptor) {
	t.Helper()
	var buf bytes.Buffer
	diffID := digest.SHA256.Digester()
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(io.MultiWriter(gz, diffID.Hash()))
	for _, h := range entries {
		h.ModTime = headerTime
		if len(h.PAXRecords) > 0 {
			h.Format = tar.FormatPAX
		}
		data := ""
		if h.Typeflag == tar.TypeReg {
			data = h.Name
			h.Size = int64(len(data))
		}
		require.NoError(t, tw.WriteHeader(&h))
		_, err := tw.Write([]byte(data))
		require.NoError(t, err)
	}
	require.NoError(t, tw.Close())
	require.NoError(t, gz.Close())
	return buf.Bytes(), ocispecs.Descriptor{
		MediaType:   ocispecs.MediaTypeImageLayerGzip,
		Digest:      digest.FromBytes(buf.Bytes()),
		Size:        int64(buf.Len()),
		Annotations: map[string]string{labels.LabelUncompressed: diffID.Digest().String()},
	}
}

// readStore records the layer readers the appliers open and can hold a
// layer's reader back until a channel is closed.
type readStore struct {
	content.Store
	mu      sync.Mutex
	opened  []digest.Digest
	open    int
	maxOpen int
	gates   map[digest.Digest]<-chan struct{}
	opens   map[digest.Digest]chan struct{}
	closes  map[digest.Digest]chan struct{}
}

func newReadStore(cs content.Store, descs []ocispecs.Descriptor) *readStore {
	s := &readStore{Store: cs, gates: map[digest.Digest]<-chan struct{}{}, opens: map[digest.Digest]chan struct{}{}, closes: map[digest.Digest]chan struct{}{}}
	for _, d := range descs {
		s.opens[d.Digest] = make(chan struct{})
		s.closes[d.Digest] = make(chan struct{})
	}
	return s
}

func (s *readStore) ReaderAt(ctx context.Context, desc ocispecs.Descriptor) (content.ReaderAt, error) {
	s.mu.Lock()
	opened, layer := s.opens[desc.Digest]
	if layer {
		s.opened = append(s.opened, desc.Digest)
		s.open++
		s.maxOpen = max(s.maxOpen, s.open)
		if len(s.opened) == slices.Index(s.opened, desc.Digest)+1 {
			close(opened)
		}
	}
	gate := s.gates[desc.Digest]
	s.mu.Unlock()
	ra, err := s.Store.ReaderAt(ctx, desc)
	if err == nil && gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			ra.Close()
			err = context.Cause(ctx)
		}
	}
	if !layer {
		return ra, err
	}
	if err != nil {
		s.closed(desc.Digest)
		return nil, err
	}
	return &readStoreReader{ReaderAt: ra, close: func() { s.closed(desc.Digest) }}, nil
}

func (s *readStore) closed(dgst digest.Digest) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.open--
	select {
	case <-s.closes[dgst]:
	default:
		close(s.closes[dgst])
	}
}

type readStoreReader struct {
	content.ReaderAt
	once  sync.Once
	close func()
}

func (r *readStoreReader) Close() error {
	r.once.Do(r.close)
	return r.ReaderAt.Close()
}

type unpackTest struct {
	cm    *cacheManager
	store *readStore
	refs  []ImmutableRef
	descs []ocispecs.Descriptor
}

// newUnpackTest lays the layers out as a chain of lazy refs in a cache
// manager on snapshotterName; bound is the parallel applier's, 0 for none.
func newUnpackTest(ctx context.Context, t *testing.T, snapshotterName string, bound int, layers ...[]tar.Header) *unpackTest {
	t.Helper()
	if os.Getuid() != 0 {
		t.Skip("the unpack tests apply layers as owned by other users and mount overlayfs: run them as root")
	}
	root := filepath.Join(t.TempDir(), "snapshots")
	var sn snapshots.Snapshotter
	var err error
	if snapshotterName == "overlayfs" {
		sn, err = overlay.NewSnapshotter(root)
	} else {
		sn, err = native.NewSnapshotter(root)
	}
	require.NoError(t, err)
	co, cleanup, err := newCacheManager(ctx, t, cmOpt{snapshotter: sn, snapshotterName: snapshotterName})
	require.NoError(t, err)
	t.Cleanup(cleanup)

	ut := &unpackTest{cm: co.manager.(*cacheManager)}
	var blobs [][]byte
	for _, l := range layers {
		b, desc := layerBlob(t, l...)
		blobs = append(blobs, b)
		ut.descs = append(ut.descs, desc)
	}
	ut.store = newReadStore(ut.cm.ContentStore, ut.descs)
	ut.cm.ContentStore = ut.store
	ut.cm.Applier = winlayers.NewFileSystemApplierWithWindows(ut.store, apply.NewFileSystemApplier(ut.store))
	if bound > 0 {
		ut.cm.Applier = NewParallelUnpackApplier(ut.cm.Applier, bound)
	}
	var parent ImmutableRef
	for i, desc := range ut.descs {
		require.NoError(t, content.WriteBlob(ctx, ut.store, desc.Digest.String(), bytes.NewReader(blobs[i]), desc))
		ref, err := ut.cm.GetByBlob(ctx, desc, parent)
		require.NoError(t, err)
		t.Cleanup(func() { ref.Release(context.WithoutCancel(ctx)) })
		ut.refs = append(ut.refs, ref)
		parent = ref
	}
	return ut
}

func (ut *unpackTest) top() ImmutableRef {
	return ut.refs[len(ut.refs)-1]
}

// trees returns the merged tree of each layer of the chain.
func (ut *unpackTest) trees(ctx context.Context, t *testing.T) []map[string]string {
	t.Helper()
	require.NoError(t, ut.top().Extract(ctx, nil))
	var trees []map[string]string
	for _, ref := range ut.refs {
		mountable, err := ref.Mount(ctx, true, nil)
		require.NoError(t, err)
		mounts, release, err := mountable.Mount()
		require.NoError(t, err)
		require.NoError(t, mount.WithReadonlyTempMount(ctx, mounts, func(root string) error {
			trees = append(trees, fileTree(t, root))
			return nil
		}))
		require.NoError(t, release())
	}
	return trees
}

// fileTree describes each path under root: type, mode, owner, link count,
// xattrs, content or link target, and the mtime when it is a header's.
func fileTree(t *testing.T, root string) map[string]string {
	tree := map[string]string{}
	require.NoError(t, filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		keys, err := sysx.LListxattr(p)
		if err != nil {
			return err
		}
		sort.Strings(keys)
		var xattrs []string
		for _, k := range keys {
			v, err := sysx.LGetxattr(p, k)
			if err != nil {
				return err
			}
			xattrs = append(xattrs, fmt.Sprintf("%s=%q", k, v))
		}
		mtime := "modified"
		if !fi.ModTime().After(headerTime) {
			mtime = fi.ModTime().UTC().Format(time.RFC3339)
		}
		desc := fmt.Sprintf("%s %d:%d nlink=%d xattrs=%v mtime=%s", fi.Mode(), st.Uid, st.Gid, st.Nlink, xattrs, mtime)
		switch {
		case fi.Mode().IsRegular():
			dt, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			desc += fmt.Sprintf(" data=%q", dt)
		case fi.Mode()&os.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			desc += " -> " + target
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		tree[rel] = desc
		return nil
	}))
	return tree
}

// requireNoExtractSnapshots checks that no apply left an active snapshot or
// a view behind.
func (ut *unpackTest) requireNoExtractSnapshots(ctx context.Context, t *testing.T) {
	t.Helper()
	var left []string
	require.NoError(t, ut.cm.Snapshotter.Walk(ctx, func(_ context.Context, info snapshots.Info) error {
		if info.Kind != snapshots.KindCommitted && strings.HasPrefix(info.Name, "extract-") {
			left = append(left, info.Name)
		}
		return nil
	}))
	require.Empty(t, left)
}

// posixACL is an extended POSIX ACL in its xattr form: user::rwx,
// user:1000:rwx, group::r-x, mask::rwx, other::r-x.
func posixACL() string {
	b := binary.LittleEndian.AppendUint32(nil, 2)
	for _, e := range []struct {
		tag, perm uint16
		id        uint32
	}{{0x01, 7, ^uint32(0)}, {0x02, 7, 1000}, {0x04, 5, ^uint32(0)}, {0x10, 7, ^uint32(0)}, {0x20, 5, ^uint32(0)}} {
		b = binary.LittleEndian.AppendUint16(b, e.tag)
		b = binary.LittleEndian.AppendUint16(b, e.perm)
		b = binary.LittleEndian.AppendUint32(b, e.id)
	}
	return string(b)
}

func TestParallelUnpackMatchesSequential(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		layers [][]tar.Header
		// expected entries of the top layer's merged tree, as a
		// sequential apply gives them
		expect map[string]string
		// the parallel path leaves a layer to be applied again on its
		// parent: one whose tar creates directories it does not list
		reapplied bool
	}{
		{
			name:      "implicit parents",
			reapplied: true,
			layers: [][]tar.Header{{
				dir("tmp", 01777, 0, 0),
				dir("home", 0755, 0, 0),
				dir("home/u", 0700, 1000, 1000),
				dir("srv", 02775, 0, 50),
				dir("data", 0750, 7, 8, "user.k", "v"),
				dir("opq", 0710, 9, 9, "user.o", "1"),
				reg("opq/gone"),
			}, {
				reg("tmp/x"),
				reg("home/u/f"),
				reg("srv/a/b/f"),
				reg("data/f"),
				reg("new/deep/f"),
				reg("opq/.wh..wh..opq"),
			}},
			expect: map[string]string{
				"tmp":      "dtrwxrwxrwx 0:0",
				"home/u":   "drwx------ 1000:1000",
				"srv":      "dgrwxrwxr-x 0:50",
				"srv/a":    "drwxr-xr-x 0:50",
				"srv/a/b":  "drwxr-xr-x 0:0",
				"data":     `drwxr-x--- 7:8 nlink=1 xattrs=[user.k="v"]`,
				"opq":      `drwx--x--- 9:9 nlink=2 xattrs=[user.o="1"] mtime=2020-01-02T03:04:05Z`,
				"new/deep": "drwxr-xr-x 0:0",
			},
		},
		{
			name: "whiteouts in listed directories",
			layers: [][]tar.Header{{
				dir("a", 0755, 0, 0), reg("a/1"), reg("a/2"),
				dir("b", 0755, 0, 0), reg("b/3"), dir("b/sub", 0755, 0, 0), reg("b/sub/4"),
				dir("c", 0700, 3, 3), reg("c/5"),
			}, {
				dir("a", 0750, 0, 0), reg("a/.wh.1"),
				dir("b", 0755, 0, 0), reg("b/.wh..wh..opq"), reg("b/new"),
				reg(".wh.c"),
			}, {
				dir("a", 0750, 0, 0), reg("a/.wh.2"),
				dir("c", 0711, 4, 4), reg("c/again"),
			}},
			expect: map[string]string{
				"a":       "drwxr-x--- 0:0 nlink=1 xattrs=[] mtime=",
				"b/new":   "-rw-r--r-- 0:0",
				"c":       "drwx--x--x 4:4",
				"c/again": "-rw-r--r-- 0:0",
			},
		},
		{
			name:      "whiteouts and opaque directories",
			reapplied: true,
			layers: [][]tar.Header{{
				dir("a", 0755, 0, 0), reg("a/1"), reg("a/2"),
				dir("b", 0755, 0, 0), reg("b/3"), dir("b/sub", 0755, 0, 0), reg("b/sub/4"),
				dir("c", 0700, 3, 3), reg("c/5"),
			}, {
				reg("a/.wh.1"),
				reg("b/.wh..wh..opq"), reg("b/new"),
				reg(".wh.c"),
			}, {
				reg("a/.wh.2"),
				reg("c/again"),
			}},
			expect: map[string]string{
				"a":       "drwxr-xr-x 0:0 nlink=1 xattrs=[] mtime=modified",
				"b/new":   "-rw-r--r-- 0:0",
				"c":       "drwxr-xr-x 0:0",
				"c/again": "-rw-r--r-- 0:0",
			},
		},
		{
			name:      "directory replaced by a file",
			reapplied: true,
			layers: [][]tar.Header{{
				dir("d", 0700, 0, 0), reg("d/x"),
				dir("e", 0700, 4, 4), reg("e/x"),
			}, {
				reg("d"),
				reg("e/y"),
			}, {
				reg("d/z"),
				reg("e/z"),
			}},
			expect: map[string]string{
				"d":   "drwxr-xr-x 0:0",
				"d/z": "-rw-r--r-- 0:0",
				"e":   "drwx------ 4:4",
			},
		},
		{
			name:      "hard links",
			reapplied: true,
			layers: [][]tar.Header{{
				dir("h", 0750, 2, 2),
			}, {
				reg("h/f"),
				link("h/g", tar.TypeLink, "h/f"),
				link("h/i", tar.TypeLink, "h/g"),
			}},
			expect: map[string]string{
				"h":   "drwxr-x--- 2:2",
				"h/i": `-rwxrwxrwx 0:0 nlink=3 xattrs=[] mtime=2020-01-02T03:04:05Z data="h/f"`,
			},
		},
		{
			name:      "symlinked parents",
			reapplied: true,
			layers: [][]tar.Header{{
				dir("usr", 0751, 3, 3),
				dir("usr/lib", 0700, 5, 5),
				dir("real", 0711, 6, 6),
			}, {
				link("lib", tar.TypeSymlink, "usr/lib"),
				link("etc", tar.TypeSymlink, "/real"),
				dir("usr/lib", 0701, 8, 8),
			}, {
				reg("lib/x"),
				link("bin", tar.TypeSymlink, "usr/bin"),
				reg("bin/sh"),
				reg("etc/conf"),
			}},
			expect: map[string]string{
				"lib":     "drwx-----x 8:8",
				"etc":     "drwxr-xr-x 0:0",
				"usr":     "drwxr-x--x 3:3",
				"usr/bin": "drwxr-xr-x 0:0",
				"real":    "drwx--x--x 6:6",
			},
		},
		{
			name:      "directory listed after its content",
			reapplied: true,
			layers: [][]tar.Header{{
				dir("a", 0700, 9, 9, "user.a", "1"),
			}, {
				reg("a/x"),
				dir("a", 0750, 2, 2, "user.b", "2"),
			}},
			expect: map[string]string{
				"a": `drwxr-x--- 2:2 nlink=1 xattrs=[user.a="1" user.b="2"] mtime=2020-01-02T03:04:05Z`,
			},
		},
		{
			name:      "implicit parent with a default ACL",
			reapplied: true,
			layers: [][]tar.Header{{
				dir("acl", 0775, 0, 0, "system.posix_acl_default", posixACL()),
			}, {
				reg("acl/f"),
			}},
			expect: map[string]string{
				"acl/f": "-rw-r--r-- 0:0 nlink=1 xattrs=[system.posix_acl_access=",
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := namespaces.WithNamespace(t.Context(), "buildkit-test")
			want := newUnpackTest(ctx, t, "overlayfs", 0, tc.layers...).trees(ctx, t)
			parallel := newUnpackTest(ctx, t, "overlayfs", len(tc.layers), tc.layers...)
			got := parallel.trees(ctx, t)
			require.Equal(t, want, got)
			top := got[len(got)-1]
			for p, prefix := range tc.expect {
				require.Contains(t, top, p)
				require.True(t, strings.HasPrefix(top[p], prefix), "%s: %s, want %s", p, top[p], prefix)
			}
			parallel.requireNoExtractSnapshots(ctx, t)
			// trees() reads no blob: each was read by the extract, once
			// unless a layer was applied again.
			if tc.reapplied {
				require.Greater(t, len(parallel.store.opened), len(tc.layers), "no layer was applied again")
			} else {
				require.Len(t, parallel.store.opened, len(tc.layers), "a layer was applied again")
			}
		})
	}
}

// chain returns count layers of one file each.
func chain(count int) [][]tar.Header {
	var layers [][]tar.Header
	for i := range count {
		layers = append(layers, []tar.Header{reg(fmt.Sprintf("f%d", i))})
	}
	return layers
}

// gatedContext ends a test whose layers wait for each other, if they never
// apply side by side, with an error instead of a hang.
func gatedContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeoutCause(namespaces.WithNamespace(t.Context(), "buildkit-test"), 2*time.Minute, fmt.Errorf("%s: the layers did not apply side by side", t.Name()))
	t.Cleanup(cancel)
	return ctx
}

// receive waits for ch, or fails t when ctx ends first.
func receive(ctx context.Context, t *testing.T, ch <-chan struct{}) {
	select {
	case <-ch:
	case <-ctx.Done():
		t.Fatal(context.Cause(ctx))
	}
}

func TestParallelUnpackBound(t *testing.T) {
	t.Parallel()
	ctx := namespaces.WithNamespace(t.Context(), "buildkit-test")

	t.Run("one at a time, lowest first", func(t *testing.T) {
		ut := newUnpackTest(ctx, t, "overlayfs", 1, chain(5)...)
		require.NoError(t, ut.top().Extract(ctx, nil))
		var want []digest.Digest
		for _, d := range ut.descs {
			want = append(want, d.Digest)
		}
		require.Equal(t, want, ut.store.opened)
		require.Equal(t, 1, ut.store.maxOpen)
	})

	t.Run("a child while its parent", func(t *testing.T) {
		ctx := gatedContext(t)
		ut := newUnpackTest(ctx, t, "overlayfs", 2, chain(5)...)
		// The parent's apply goes on only once its child's has started.
		ut.store.gates[ut.descs[1].Digest] = ut.store.opens[ut.descs[2].Digest]
		require.NoError(t, ut.top().Extract(ctx, nil))
		require.Equal(t, 2, ut.store.maxOpen)
		require.Len(t, ut.store.opened, 5)
		ut.requireNoExtractSnapshots(ctx, t)
	})
}

func TestParallelUnpackFailure(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		bad  int // the layer whose diffID does not match
		gate int // the layer held back until the other one's reader closes
	}{
		{name: "parent fails after its child applied", bad: 1, gate: 1},
		{name: "child fails while its parent applies", bad: 2, gate: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := gatedContext(t)
			layers := chain(3)
			ut := newUnpackTest(ctx, t, "overlayfs", 3, layers...)
			bad, _ := layerBlob(t, reg("other"))
			badDesc := ut.descs[tc.bad]
			badDesc.Digest = digest.FromBytes(bad)
			badDesc.Size = int64(len(bad))
			require.NoError(t, content.WriteBlob(ctx, ut.store, "bad", bytes.NewReader(bad), badDesc))
			ut.descs[tc.bad] = badDesc
			ut.store.opens[badDesc.Digest] = make(chan struct{})
			ut.store.closes[badDesc.Digest] = make(chan struct{})

			var parent ImmutableRef = ut.refs[tc.bad-1]
			ut.refs = ut.refs[:tc.bad]
			for _, desc := range ut.descs[tc.bad:] {
				ref, err := ut.cm.GetByBlob(ctx, desc, parent)
				require.NoError(t, err)
				t.Cleanup(func() { ref.Release(context.WithoutCancel(ctx)) })
				ut.refs = append(ut.refs, ref)
				parent = ref
			}
			other := 3 - tc.gate
			ut.store.gates[ut.descs[tc.gate].Digest] = ut.store.closes[ut.descs[other].Digest]

			err := ut.top().Extract(ctx, nil)
			require.ErrorContains(t, err, "failed to verify layer "+badDesc.Digest.String())
			// The other layer was read to its end: both applied.
			receive(ctx, t, ut.store.closes[ut.descs[other].Digest])
			require.Contains(t, ut.store.opened, ut.descs[other].Digest)
			ut.requireNoExtractSnapshots(ctx, t)
			for _, ref := range ut.refs[tc.bad:] {
				_, err := ut.cm.Snapshotter.Stat(ctx, ref.(*immutableRef).getSnapshotID())
				require.Error(t, err)
			}
		})
	}
}

func TestParallelUnpackCancel(t *testing.T) {
	t.Parallel()
	ctx := gatedContext(t)
	ut := newUnpackTest(ctx, t, "overlayfs", 3, chain(3)...)
	// The bottom layer never applies; its children apply, and the extract
	// is cancelled before they can be committed.
	ut.store.gates[ut.descs[0].Digest] = make(chan struct{})
	ctx, cancel := context.WithCancelCause(ctx)
	go func() {
		defer cancel(context.Canceled)
		for _, l := range []int{1, 2} {
			select {
			case <-ut.store.closes[ut.descs[l].Digest]:
			case <-ctx.Done():
				return
			}
		}
	}()
	require.ErrorIs(t, ut.top().Extract(ctx, nil), context.Canceled)
	ctx = context.WithoutCancel(ctx)
	ut.requireNoExtractSnapshots(ctx, t)
	for _, ref := range ut.refs {
		_, err := ut.cm.Snapshotter.Stat(ctx, ref.(*immutableRef).getSnapshotID())
		require.Error(t, err)
	}
	// A later extract applies the chain.
	delete(ut.store.gates, ut.descs[0].Digest)
	require.NoError(t, ut.top().Extract(ctx, nil))
}

func TestParallelUnpackSharedChain(t *testing.T) {
	t.Parallel()
	ctx := gatedContext(t)
	ut := newUnpackTest(ctx, t, "overlayfs", 4, chain(4)...)
	// A second ref of the same records, as a second build gets.
	again, err := ut.cm.Get(ctx, ut.top().ID(), nil)
	require.NoError(t, err)
	defer again.Release(context.WithoutCancel(ctx))
	// The bottom layer waits until both extracts wait for it.
	ut.store.gates[ut.descs[0].Digest] = ut.store.opens[ut.descs[3].Digest]
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i, ref := range []ImmutableRef{ut.top(), again} {
		wg.Go(func() { errs[i] = ref.Extract(ctx, nil) })
	}
	wg.Wait()
	require.NoError(t, errs[0])
	require.NoError(t, errs[1])
	require.Len(t, ut.store.opened, 4)
}

// A snapshotter other than overlayfs keeps the sequential apply.
func TestParallelUnpackNative(t *testing.T) {
	t.Parallel()
	ctx := namespaces.WithNamespace(t.Context(), "buildkit-test")
	layers := [][]tar.Header{{dir("a", 0700, 1, 1), reg("a/1")}, {reg("a/2")}}
	want := newUnpackTest(ctx, t, "native", 0, layers...).trees(ctx, t)
	require.Equal(t, want, newUnpackTest(ctx, t, "native", 2, layers...).trees(ctx, t))
	require.Contains(t, want[1], "a/1")
}

// statusProgress records the statuses a layer's progress controller is
// given.
type statusProgress struct {
	mu       sync.Mutex
	statuses []string
}

func (p *statusProgress) Start(ctx context.Context) (context.Context, func(error)) {
	return ctx, func(error) {}
}

func (p *statusProgress) Status(id string, action string) func() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.statuses = append(p.statuses, id)
	return func() {}
}

// Each layer reports its extraction to its own descriptor handler's
// progress, as a pull's refs carry them; run with -race, this also checks
// that the parent's apply and the child's do not share the controller.
func TestUnpackProgress(t *testing.T) {
	t.Parallel()
	ctx := namespaces.WithNamespace(t.Context(), "buildkit-test")
	for _, bound := range []int{0, 2} {
		t.Run(fmt.Sprintf("bound %d", bound), func(t *testing.T) {
			t.Parallel()
			ut := newUnpackTest(ctx, t, "overlayfs", bound, chain(3)...)
			dhs := DescHandlers{}
			pgs := map[digest.Digest]*statusProgress{}
			for _, desc := range ut.descs {
				pgs[desc.Digest] = &statusProgress{}
				dhs[desc.Digest] = &DescHandler{Progress: pgs[desc.Digest]}
			}
			ref, err := ut.cm.Get(ctx, ut.top().ID(), nil, dhs)
			require.NoError(t, err)
			defer ref.Release(context.WithoutCancel(ctx))
			require.NoError(t, ref.Extract(ctx, nil))
			for _, desc := range ut.descs {
				require.Equal(t, []string{"extracting " + desc.Digest.String()}, pgs[desc.Digest].statuses, "layer %s", desc.Digest)
			}
		})
	}
}

// mediaTypeApplier is a worker's applier that knows a media type of its own
// (as the nydus build's applier knows nydus blobs): it applies such a layer
// as the gzip layer it is made of, and records that it did.
type mediaTypeApplier struct {
	diff.Applier
	mediaType string
	mu        sync.Mutex
	applied   []digest.Digest
}

func (a *mediaTypeApplier) Apply(ctx context.Context, desc ocispecs.Descriptor, mounts []mount.Mount, opts ...diff.ApplyOpt) (ocispecs.Descriptor, error) {
	if desc.MediaType == a.mediaType {
		a.mu.Lock()
		a.applied = append(a.applied, desc.Digest)
		a.mu.Unlock()
		desc.MediaType = ocispecs.MediaTypeImageLayerGzip
	}
	return a.Applier.Apply(ctx, desc, mounts, opts...)
}

// A layer of a media type the parallel path does not decompress itself is
// applied by the worker's applier, on its committed parent; the others of
// its chain are applied in parallel.
func TestParallelUnpackOtherMediaType(t *testing.T) {
	t.Parallel()
	ctx := namespaces.WithNamespace(t.Context(), "buildkit-test")
	const mediaType = "application/vnd.example.layer.v1+gzip"
	ut := newUnpackTest(ctx, t, "overlayfs", 2, chain(1)...)
	wa := &mediaTypeApplier{Applier: ut.cm.Applier.(*parallelApplier).Applier, mediaType: mediaType}
	ut.cm.Applier = NewParallelUnpackApplier(wa, 2)
	parent := ut.top()
	for i, l := range [][]tar.Header{{reg("other")}, {reg("gzip")}} {
		b, desc := layerBlob(t, l...)
		if i == 0 {
			desc.MediaType = mediaType
		}
		ut.store.opens[desc.Digest] = make(chan struct{})
		ut.store.closes[desc.Digest] = make(chan struct{})
		require.NoError(t, content.WriteBlob(ctx, ut.store, desc.Digest.String(), bytes.NewReader(b), desc))
		ref, err := ut.cm.GetByBlob(ctx, desc, parent)
		require.NoError(t, err)
		t.Cleanup(func() { ref.Release(context.WithoutCancel(ctx)) })
		ut.refs = append(ut.refs, ref)
		ut.descs = append(ut.descs, desc)
		parent = ref
	}
	trees := ut.trees(ctx, t)
	require.Equal(t, []digest.Digest{ut.descs[1].Digest}, wa.applied)
	require.Contains(t, trees[2], "other")
	require.Contains(t, trees[2], "gzip")
	ut.requireNoExtractSnapshots(ctx, t)
}
