package client

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"sync"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/buildkit/client/ociindex"
	"github.com/moby/buildkit/identity"
	"github.com/moby/buildkit/util/bklog"
	digest "github.com/opencontainers/go-digest"
	ocispecs "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/pkg/errors"
)

// blobLinker lets the local cache exports of a solve take blobs from the
// directories the same solve imports lazily, instead of receiving them from
// the daemon.
//
// A layer imported lazily and never pulled is exported by the daemon
// reading it from the imported directory through the session and writing
// it back through the session: every byte crosses twice, though the client
// holds it already (the local analogue of a registry's cross-repository
// mount is missing). When the daemon opens a writer for a blob that an
// imported directory holds, the blob is hard-linked (or copied, across file
// systems) into the export directory once its digest is checked, and the
// writer is refused as already existing, which makes the daemon skip it. A
// blob whose content does not match its digest is not taken: the daemon's
// own copy then fails as a corrupt blob, instead of the export spreading it.
//
// The daemon asks for one blob after another, so checking each when it is
// asked for would hash the whole cache on one core at the end of the solve.
// When a solve exports to a directory it does not import, the blobs that
// the imported directories' manifests reference are checked in the
// background from the start of the solve instead, on up to as many
// goroutines as there are CPUs (at most 4). A blob is linked only if the
// file is still the one that was checked: same file, size and modification
// time; otherwise what was linked is checked again.
type blobLinker struct {
	// from are the directories imported lazily.
	from []string
	// stores are their content stores, those the solve imports them with.
	stores map[string]content.Store

	mu sync.Mutex
	// checks holds a check per blob file of a directory in from, running
	// or done.
	checks map[string]*blobCheck

	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// blobCheck is the check of one blob file; fi and err are set once done is
// closed.
type blobCheck struct {
	done chan struct{}
	// fi is the file as it was while its content matched.
	fi  os.FileInfo
	err error
}

// maxBackgroundChecks bounds the goroutines checking blobs in the
// background.
const maxBackgroundChecks = 4

// newBlobLinker returns the linker for a solve that imports the directories
// in lazyImports lazily and exports the cache to the directories that key
// exportDirs; stores holds the solve's content stores by ID ("local:" +
// directory). It starts checking blobs in the background when an export
// directory is not one of the imported ones; stop ends that.
func newBlobLinker(ctx context.Context, lazyImports []string, exportDirs map[string]string, stores map[string]content.Store) *blobLinker {
	l := &blobLinker{from: lazyImports, stores: map[string]content.Store{}, checks: map[string]*blobCheck{}}
	for _, dir := range lazyImports {
		l.stores[dir] = stores["local:"+dir]
	}
	var targets []string
	for dir := range exportDirs {
		if len(l.others(dir)) > 0 {
			targets = append(targets, dir)
		}
	}
	if len(targets) == 0 {
		return l
	}
	ctx, l.cancel = context.WithCancel(ctx)
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		l.checkAll(ctx, targets)
	}()
	return l
}

// stop ends the background checks and waits for them.
func (l *blobLinker) stop() {
	if l.cancel != nil {
		l.cancel()
		l.wg.Wait()
	}
}

// others returns the directories in from other than dir.
func (l *blobLinker) others(dir string) []string {
	var others []string
	for _, d := range l.from {
		if filepath.Clean(d) != filepath.Clean(dir) {
			others = append(others, d)
		}
	}
	return others
}

// exportStore returns cs, the store of the export directory dir, taking
// blobs from the other directories the solve imports lazily.
func (l *blobLinker) exportStore(cs content.Store, dir string) content.Store {
	others := l.others(dir)
	if len(others) == 0 {
		return cs
	}
	return &linkingStore{Store: cs, linker: l, dir: dir}
}

// checkAll checks, on up to maxBackgroundChecks goroutines, every blob that
// the manifests of the imported directories reference and that one of the
// directories in targets lacks.
func (l *blobLinker) checkAll(ctx context.Context, targets []string) {
	type blob struct {
		path string
		desc ocispecs.Descriptor
	}
	var blobs []blob
	for _, dir := range l.from {
		descs, err := referencedBlobs(ctx, dir, l.stores[dir])
		if err != nil {
			bklog.G(ctx).WithError(err).Debugf("lazy cache import %s: not checking its blobs ahead of the export", dir)
			continue
		}
		for _, desc := range descs {
			for _, t := range targets {
				if _, err := os.Stat(blobPath(t, desc.Digest)); os.IsNotExist(err) {
					blobs = append(blobs, blob{path: blobPath(dir, desc.Digest), desc: desc})
					break
				}
			}
		}
	}
	work := make(chan blob)
	var wg sync.WaitGroup
	for range min(runtime.GOMAXPROCS(0), maxBackgroundChecks, len(blobs)) {
		wg.Go(func() {
			for b := range work {
				l.check(ctx, b.path, b.desc.Digest, b.desc.Size)
			}
		})
	}
	defer wg.Wait()
	defer close(work)
	for _, b := range blobs {
		select {
		case work <- b:
		case <-ctx.Done():
			return
		}
	}
}

// referencedBlobs lists the blobs with a size that the manifests in the
// index of the cache directory dir, whose content store is cs, reference,
// the manifests included.
func referencedBlobs(ctx context.Context, dir string, cs content.Store) ([]ocispecs.Descriptor, error) {
	if cs == nil {
		return nil, errors.Errorf("no content store for %s", dir)
	}
	index, err := ociindex.NewStoreIndex(dir).Read()
	if err != nil {
		return nil, err
	}
	var mu sync.Mutex
	seen := map[digest.Digest]struct{}{}
	var descs []ocispecs.Descriptor
	children := images.ChildrenHandler(cs)
	handler := images.HandlerFunc(func(ctx context.Context, desc ocispecs.Descriptor) ([]ocispecs.Descriptor, error) {
		mu.Lock()
		if _, ok := seen[desc.Digest]; !ok && desc.Size > 0 && desc.Digest.Validate() == nil {
			seen[desc.Digest] = struct{}{}
			descs = append(descs, desc)
		}
		mu.Unlock()
		return children(ctx, desc)
	})
	if err := images.Dispatch(ctx, handler, nil, index.Manifests...); err != nil {
		return nil, err
	}
	return descs, nil
}

// check checks the blob file at path against dgst and size, once per solve
// unless the check was canceled. Callers asking while it runs wait for it.
func (l *blobLinker) check(ctx context.Context, path string, dgst digest.Digest, size int64) (os.FileInfo, error) {
	for {
		l.mu.Lock()
		c, running := l.checks[path]
		if !running {
			c = &blobCheck{done: make(chan struct{})}
			l.checks[path] = c
		}
		l.mu.Unlock()
		if !running {
			c.fi, c.err = checkBlobFile(ctx, path, dgst, size)
			if ctx.Err() != nil {
				// Canceled: let the next caller check again.
				l.mu.Lock()
				delete(l.checks, path)
				l.mu.Unlock()
			}
			close(c.done)
			return c.fi, c.err
		}
		select {
		case <-c.done:
		case <-ctx.Done():
			return nil, context.Cause(ctx)
		}
		if c.err == nil || !(errors.Is(c.err, context.Canceled) || errors.Is(c.err, context.DeadlineExceeded)) {
			return c.fi, c.err
		}
	}
}

// checkBlobFile hashes the file at path and returns its FileInfo if its
// content has digest dgst and size bytes and it did not change meanwhile.
// A missing file is an error satisfying os.IsNotExist.
func checkBlobFile(ctx context.Context, path string, dgst digest.Digest, size int64) (os.FileInfo, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	before, err := f.Stat()
	if err != nil {
		return nil, err
	}
	verifier := dgst.Verifier()
	n, err := io.Copy(verifier, &ctxReader{ctx: ctx, r: f})
	if err != nil {
		return nil, err
	}
	after, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if n != size || !verifier.Verified() {
		return nil, errors.Errorf("blob %s at %s does not match its digest", dgst, path)
	}
	if !sameFile(before, after) {
		return nil, errors.Errorf("blob %s at %s changed while it was checked", dgst, path)
	}
	return after, nil
}

// sameFile reports whether a and b describe one file, unmodified between
// the two.
func sameFile(a, b os.FileInfo) bool {
	return os.SameFile(a, b) && a.Size() == b.Size() && a.ModTime().Equal(b.ModTime())
}

// ctxReader stops reading once ctx is done.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (r *ctxReader) Read(p []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, context.Cause(r.ctx)
	}
	return r.r.Read(p)
}

// linkingStore is the content store of a local cache export directory dir
// that takes blobs from the other directories the solve imports lazily.
type linkingStore struct {
	content.Store
	linker *blobLinker
	dir    string
}

func (s *linkingStore) Writer(ctx context.Context, opts ...content.WriterOpt) (content.Writer, error) {
	var wOpts content.WriterOpts
	for _, o := range opts {
		if err := o(&wOpts); err != nil {
			return nil, err
		}
	}
	dgst := wOpts.Desc.Digest
	if dgst.Validate() == nil && wOpts.Desc.Size > 0 {
		if _, err := s.Store.Info(ctx, dgst); err != nil && cerrdefs.IsNotFound(err) {
			for _, d := range s.linker.others(s.dir) {
				ok, err := s.linker.link(ctx, blobPath(d, dgst), blobPath(s.dir, dgst), dgst, wOpts.Desc.Size)
				if err != nil {
					bklog.G(ctx).WithError(err).Debugf("not taking blob %s from %s", dgst, d)
					continue
				}
				if ok {
					return nil, errors.Wrapf(cerrdefs.ErrAlreadyExists, "content %s taken from %s", dgst, d)
				}
			}
		}
	}
	return s.Store.Writer(ctx, opts...)
}

func blobPath(dir string, dgst digest.Digest) string {
	return filepath.Join(dir, "blobs", dgst.Algorithm().String(), dgst.Encoded())
}

// link puts the blob src at dst when src has the given digest and size: a
// hard link when both are on one file system, a copy otherwise. A link to
// the file that was checked is taken as it is; a link to a file replaced or
// modified since, or a copy, is checked itself. It reports false when src
// is not there.
func (l *blobLinker) link(ctx context.Context, src, dst string, dgst digest.Digest, size int64) (bool, error) {
	checked, err := l.check(ctx, src, dgst, size)
	if err != nil {
		if os.IsNotExist(err) {
			return false, nil
		}
		return false, err
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return false, err
	}
	tmp := filepath.Join(filepath.Dir(dst), ".link-"+identity.NewID())
	defer os.Remove(tmp)
	recheck := true
	if err := os.Link(src, tmp); err == nil {
		fi, err := os.Stat(tmp)
		if err != nil {
			return false, err
		}
		recheck = !sameFile(checked, fi)
	} else if err := copyFile(src, tmp); err != nil {
		return false, err
	}
	if recheck {
		if _, err := checkBlobFile(ctx, tmp, dgst, size); err != nil {
			return false, err
		}
	}
	return true, os.Rename(tmp, dst)
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o444)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
