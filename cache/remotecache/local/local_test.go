package local

import (
	"testing"

	digest "github.com/opencontainers/go-digest"
	"github.com/stretchr/testify/require"
)

func TestResolveCacheImporterFuncInvalidLazy(t *testing.T) {
	_, _, err := ResolveCacheImporterFunc(nil)(t.Context(), nil, map[string]string{
		attrDigest: digest.FromString("index").String(),
		attrSrc:    "/cache",
		attrLazy:   "maybe",
	})
	require.ErrorContains(t, err, `failed to parse lazy: strconv.ParseBool: parsing "maybe"`)
}
