//go:build !linux

package cache

import (
	"context"

	"github.com/containerd/containerd/v2/core/content"
	digest "github.com/opencontainers/go-digest"
	ocispecs "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/pkg/errors"
)

// Layers are applied in place into an overlayfs upperdir on Linux only.
const parallelUnpackSupported = false

type implicitDirs struct{}

func (d *implicitDirs) needFixup() bool { return false }

func applyInPlace(context.Context, content.Provider, ocispecs.Descriptor, string) (digest.Digest, *implicitDirs, error) {
	return "", nil, errors.New("applying a layer in place is supported on Linux only")
}
