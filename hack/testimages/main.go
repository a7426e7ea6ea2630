// Command testimages fills a registry storage directory with locally built
// stand-ins for the images that upstream BuildKit's client integration
// tests mirror, so that they run offline with
// BUILDKIT_REGISTRY_MIRROR_DIR pointing at it.
//
//	go run . -dir /tmp/mirror
//
// It needs the registry binary in PATH (Debian's docker-registry, linked as
// registry) and a static busybox (Debian's busybox-static). Images already
// in the directory with the same digest are left alone, so a rerun pushes
// nothing.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/containerd/containerd/v2/core/remotes/docker"
	cerrdefs "github.com/containerd/errdefs"
	"github.com/gofrs/flock"
	"github.com/moby/buildkit/util/contentutil"
	"github.com/moby/buildkit/util/testutil/integration"
	"github.com/pkg/errors"
	"github.com/sirupsen/logrus"
)

func main() {
	dir := flag.String("dir", "", "registry storage directory to fill (BUILDKIT_REGISTRY_MIRROR_DIR)")
	busybox := flag.String("busybox", "/bin/busybox", "statically linked busybox binary to build the images from")
	flag.Parse()
	// The resolver logs every 404 of the first run at info level.
	logrus.SetLevel(logrus.WarnLevel)
	if err := run(context.Background(), *dir, *busybox); err != nil {
		fmt.Fprintf(os.Stderr, "testimages: %v\n", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, dir, busybox string) error {
	if dir == "" {
		return errors.New("-dir is required")
	}
	if _, err := exec.LookPath("registry"); err != nil {
		return errors.Wrap(err, "registry not found in PATH: install the Debian package docker-registry and link /usr/bin/docker-registry as registry in a directory of PATH")
	}
	if _, err := os.Stat(busybox); err != nil {
		return errors.Wrap(err, "busybox not found: install the Debian package busybox-static")
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		return errors.WithStack(err)
	}
	if err := os.MkdirAll(dir, 0700); err != nil {
		return errors.WithStack(err)
	}

	imgs, err := standIns(busybox)
	if err != nil {
		return err
	}

	// The test framework serializes its own mirrors on this lock; take it
	// too so that a test run started meanwhile does not copy in images.
	lock, err := lockDir(dir)
	if err != nil {
		return err
	}
	defer lock.Unlock()

	host, stop, err := integration.NewRegistry(dir)
	if err != nil {
		return errors.Wrapf(err, "failed to start registry on %s", dir)
	}
	defer stop()

	for _, img := range imgs {
		if err := push(ctx, host, img); err != nil {
			return err
		}
	}
	return nil
}

// push writes img to the registry at host unless the registry already has
// the same manifest under its name.
func push(ctx context.Context, host string, img image) error {
	ref := host + "/" + img.name
	buf, desc, err := img.write(ctx)
	if err != nil {
		return err
	}
	_, have, err := docker.NewResolver(docker.ResolverOptions{}).Resolve(ctx, ref)
	switch {
	case err == nil && have.Digest == desc.Digest:
		fmt.Printf("%s %s up to date\n", img.name, desc.Digest)
		return nil
	case err != nil && !cerrdefs.IsNotFound(err):
		return errors.Wrapf(err, "failed to resolve %s", ref)
	}
	ingester, err := contentutil.IngesterFromRef(ctx, ref)
	if err != nil {
		return errors.Wrapf(err, "failed to push %s", ref)
	}
	if err := contentutil.CopyChain(ctx, ingester, buf, desc); err != nil {
		return errors.Wrapf(err, "failed to push %s", ref)
	}
	fmt.Printf("%s %s pushed\n", img.name, desc.Digest)
	return nil
}

// lockDir takes the lock integration.Mirror takes on the same directory.
func lockDir(dir string) (*flock.Flock, error) {
	lock := flock.New(filepath.Join(dir, "lock"))
	if err := lock.Lock(); err != nil {
		return nil, errors.Wrapf(err, "failed to lock %s", dir)
	}
	return lock, nil
}
