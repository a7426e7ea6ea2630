package scenario

import (
	"context"

	"github.com/pkg/errors"
)

// MakeBaseLayers is MakeBase with the image's number of layers given
// instead of following from its size: the rootfs and layers-1 layers of
// files. The cache exporter's Info calls grow with the square of a cache
// chain's length, so the remote row compares bases of one size by their
// number of layers.
func MakeBaseLayers(ctx context.Context, tools Tools, reg *Registry, config, workDir, repo string, target int64, layers int, logf Logf) (BaseImage, error) {
	if layers < 2 {
		return BaseImage{}, errors.Errorf("a base image of %d layers: want at least 2, the rootfs and one of files", layers)
	}
	return makeBase(ctx, tools, reg, config, workDir, repo, target, layers-1, logf)
}
