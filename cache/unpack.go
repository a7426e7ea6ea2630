package cache

import (
	"context"
	"fmt"
	"sync"

	"github.com/containerd/containerd/v2/core/diff"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/buildkit/identity"
	"github.com/moby/buildkit/util/bklog"
	ocispecs "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/pkg/errors"
	"golang.org/x/sync/semaphore"
)

// errApplySequentially is returned by the parallel path for a layer whose
// result it cannot make identical to a sequential apply; the layer is then
// applied again on its committed parent.
var errApplySequentially = errors.New("layer must be applied on its parent")

// parallelApplier marks the applier of a worker whose overlayfs snapshotter
// lets the layers of a chain be applied concurrently, and bounds how many
// layers are applied at once.
type parallelApplier struct {
	diff.Applier
	sem *semaphore.Weighted
}

// NewParallelUnpackApplier returns a, marked so that the cache manager using
// it applies the layers of a chain concurrently, at most n at a time, when its
// snapshotter is overlayfs: each layer is applied into a snapshot without a
// parent, written in place with overlay whiteouts, and committed on its
// parent once the parent is. Other layers, and every layer on other
// snapshotters and operating systems, are applied as by a.
func NewParallelUnpackApplier(a diff.Applier, n int) diff.Applier {
	if !parallelUnpackSupported || n < 1 {
		return a
	}
	return &parallelApplier{Applier: a, sem: semaphore.NewWeighted(int64(n))}
}

// unpackSignal is closed once a layer's apply holds a slot, so that its
// child, which waits for it, asks for a slot only after it: a chain is
// applied lowest layer first whatever the bound.
type unpackSignal struct {
	once, closeOnce sync.Once
	ch              chan struct{}
}

func (s *unpackSignal) wait() <-chan struct{} {
	s.once.Do(func() { s.ch = make(chan struct{}) })
	return s.ch
}

func (s *unpackSignal) close() {
	s.wait()
	s.closeOnce.Do(func() { close(s.ch) })
}

// parallelUnpack returns the parallel applier of sr's manager if it has one
// and may apply sr without its parent: on overlayfs, not a Windows layer.
func (sr *immutableRef) parallelUnpack() *parallelApplier {
	pa, ok := sr.cm.Applier.(*parallelApplier)
	if !ok || sr.cm.Snapshotter.Name() != "overlayfs" || sr.GetLayerType() == "windows" {
		return nil
	}
	return pa
}

// appliesInPlace reports whether a layer of mediaType can be applied
// without its parent: a plain tar, gzip or zstd layer, whose stream the
// applier would decompress itself. The parallel path does not go through the
// worker's applier, whose diff.ApplyConfig has no tar filter to record the
// directories a layer creates implicitly; any other layer (nydus, encrypted,
// what a future applier handles) is applied by the worker's applier, on its
// committed parent.
func appliesInPlace(mediaType string) bool {
	switch mediaType {
	case ocispecs.MediaTypeImageLayer, ocispecs.MediaTypeImageLayerGzip, ocispecs.MediaTypeImageLayerZstd,
		images.MediaTypeDockerSchema2Layer, images.MediaTypeDockerSchema2LayerGzip, images.MediaTypeDockerSchema2LayerZstd:
		return true
	}
	return false
}

// acquire takes a slot once the parent's apply holds one or is done.
func (pa *parallelApplier) acquire(ctx context.Context, sr *immutableRef, parentDone <-chan struct{}) (func(), error) {
	if pa == nil {
		return func() {}, nil
	}
	if sr.layerParent != nil {
		select {
		case <-sr.layerParent.unpackStarted.wait():
		case <-parentDone:
		case <-ctx.Done():
			return nil, context.Cause(ctx)
		}
	}
	if err := pa.sem.Acquire(ctx, 1); err != nil {
		return nil, err
	}
	sr.unpackStarted.close()
	return func() { pa.sem.Release(1) }, nil
}

// detachedLayer is a layer applied into an active snapshot that has no
// parent yet.
type detachedLayer struct {
	key     string
	leaseID string // the lease the snapshot is in
	dirs    *implicitDirs
}

// applyDetached applies desc into a new active snapshot without a parent,
// in place, and checks its diffID. It removes the snapshot if it fails.
func (sr *immutableRef) applyDetached(ctx context.Context, pa *parallelApplier, desc ocispecs.Descriptor, parentDone <-chan struct{}) (_ *detachedLayer, rerr error) {
	release, err := pa.acquire(ctx, sr, parentDone)
	if err != nil {
		return nil, err
	}
	defer release()

	d := &detachedLayer{key: fmt.Sprintf("extract-%s %s", identity.NewID(), sr.getChainID())}
	d.leaseID, _ = leases.FromContext(ctx)
	if err := sr.cm.Snapshotter.Prepare(ctx, d.key, ""); err != nil {
		return nil, err
	}
	defer func() {
		if rerr != nil {
			d.remove(ctx, sr)
		}
	}()
	mounts, err := snapshotMounts(ctx, sr, d.key)
	if err != nil {
		return nil, err
	}
	// The overlayfs snapshotter mounts a snapshot without parent as a bind
	// mount of its upperdir, which is written in place and never mounted.
	if len(mounts) != 1 || mounts[0].Type != "bind" {
		return nil, errApplySequentially
	}
	diffID, dirs, err := applyInPlace(ctx, sr.cm.ContentStore, desc, mounts[0].Source)
	if err != nil {
		return nil, err
	}
	if diffID != sr.getDiffID() {
		return nil, errors.Errorf("failed to verify layer %s: expected diffID %s, got %s", desc.Digest, sr.getDiffID(), diffID)
	}
	d.dirs = dirs
	return d, nil
}

// commit commits the layer on its parent. A layer whose tar creates
// directories it does not list is left to be applied on its committed
// parent: only there do they get the attributes of the directory at the
// same path in the nearest lower layer, as a sequential apply gives them.
func (d *detachedLayer) commit(ctx context.Context, sr *immutableRef, parentID string) error {
	if d.dirs.needFixup() {
		return errApplySequentially
	}
	return sr.cm.Snapshotter.Commit(ctx, sr.getSnapshotID(), d.key, snapshots.WithParent(parentID))
}

// remove drops the snapshot from the extraction's lease and collects it.
func (d *detachedLayer) remove(ctx context.Context, sr *immutableRef) {
	dropSnapshot(ctx, sr, d.leaseID, d.key)
}

// dropSnapshot deletes the snapshot key from the lease it was made in and
// collects it.
func dropSnapshot(ctx context.Context, sr *immutableRef, leaseID, key string) {
	ctx = context.WithoutCancel(ctx)
	if err := sr.cm.LeaseManager.DeleteResource(ctx, leases.Lease{ID: leaseID}, leases.Resource{
		ID:   key,
		Type: "snapshots/" + sr.cm.Snapshotter.Name(),
	}); err != nil && !cerrdefs.IsNotFound(err) {
		bklog.G(ctx).Warn(errors.Wrapf(err, "failed to delete snapshot %s from lease %s", key, leaseID))
	}
	if sr.cm.GarbageCollect != nil {
		if _, err := sr.cm.GarbageCollect(ctx); err != nil {
			bklog.G(ctx).Warn(errors.Wrapf(err, "failed to garbage collect snapshot %s", key))
		}
	}
}

func snapshotMounts(ctx context.Context, sr *immutableRef, key string) ([]mount.Mount, error) {
	mountable, err := sr.cm.Snapshotter.Mounts(ctx, key)
	if err != nil {
		return nil, err
	}
	mounts, release, err := mountable.Mount()
	if err != nil {
		return nil, err
	}
	return mounts, release()
}
