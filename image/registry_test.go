package image

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/pkg/errors"
)

// The media types the tests write and walk.
const (
	mediaTypeOCIIndex      = "application/vnd.oci.image.index.v1+json"
	mediaTypeOCIManifest   = "application/vnd.oci.image.manifest.v1+json"
	mediaTypeOCIConfig     = "application/vnd.oci.image.config.v1+json"
	mediaTypeOCILayerGzip  = "application/vnd.oci.image.layer.v1.tar+gzip"
	mediaTypeDockerList    = "application/vnd.docker.distribution.manifest.list.v2+json"
	mediaTypeDockerSchema2 = "application/vnd.docker.distribution.manifest.v2+json"
)

// descriptor is the part of an OCI descriptor the tests use.
type descriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int64             `json:"size"`
	Platform    *platform         `json:"platform,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

type platform struct {
	Architecture string `json:"architecture"`
	OS           string `json:"os"`
	Variant      string `json:"variant,omitempty"`
}

func (p *platform) String() string {
	if p == nil {
		return "<none>"
	}
	s := p.OS + "/" + p.Architecture
	if p.Variant != "" {
		s += "/" + p.Variant
	}
	return s
}

type index struct {
	SchemaVersion int          `json:"schemaVersion"`
	MediaType     string       `json:"mediaType,omitempty"`
	Manifests     []descriptor `json:"manifests"`
}

type manifest struct {
	SchemaVersion int          `json:"schemaVersion"`
	MediaType     string       `json:"mediaType,omitempty"`
	Config        descriptor   `json:"config"`
	Layers        []descriptor `json:"layers"`
}

func digestOf(data []byte) string {
	return fmt.Sprintf("sha256:%x", sha256.Sum256(data))
}

var registryClient = &http.Client{Timeout: 2 * time.Minute}

// pushBlob uploads data to repo in the loopback registry with the registry
// HTTP API's monolithic upload, unless the registry has it already.
func (e *env) pushBlob(repo string, data []byte) (string, error) {
	dgst := digestOf(data)
	base := "http://" + e.registry + "/v2/" + repo
	resp, err := registryClient.Head(base + "/blobs/" + dgst)
	if err != nil {
		return "", err
	}
	resp.Body.Close()
	if resp.StatusCode == http.StatusOK {
		return dgst, nil
	}
	resp, err = registryClient.Post(base+"/blobs/uploads/", "", nil)
	if err != nil {
		return "", err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		return "", errors.Errorf("registry: starting an upload to %s: %s", repo, resp.Status)
	}
	loc, err := url.Parse(resp.Header.Get("Location"))
	if err != nil {
		return "", errors.Wrap(err, "registry: upload location")
	}
	loc = resp.Request.URL.ResolveReference(loc)
	q := loc.Query()
	q.Set("digest", dgst)
	loc.RawQuery = q.Encode()
	req, err := http.NewRequest(http.MethodPut, loc.String(), bytes.NewReader(data))
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err = registryClient.Do(req)
	if err != nil {
		return "", err
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		return "", errors.Errorf("registry: uploading blob %s to %s: %s: %s", dgst, repo, resp.Status, body)
	}
	return dgst, nil
}

// pushManifest puts a manifest or index to repo under ref, a tag or its
// digest.
func (e *env) pushManifest(repo, ref, mediaType string, data []byte) error {
	req, err := http.NewRequest(http.MethodPut, "http://"+e.registry+"/v2/"+repo+"/manifests/"+ref, bytes.NewReader(data))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", mediaType)
	resp, err := registryClient.Do(req)
	if err != nil {
		return err
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		return errors.Errorf("registry: putting manifest %s:%s: %s: %s", repo, ref, resp.Status, body)
	}
	return nil
}

// pushLayer pushes a one-layer image for this machine's platform to repo:tag,
// its layer the given blob (compressed as the caller chose, mediaType saying
// how) whose uncompressed tar has the digest diffID.
func (e *env) pushLayer(repo, tag string, layer []byte, mediaType, diffID string) (string, error) {
	config, err := json.Marshal(map[string]any{
		"architecture": runtime.GOARCH,
		"os":           "linux",
		"rootfs":       map[string]any{"type": "layers", "diff_ids": []string{diffID}},
		"config":       map[string]any{},
	})
	if err != nil {
		return "", err
	}
	configDigest, err := e.pushBlob(repo, config)
	if err != nil {
		return "", err
	}
	layerDigest, err := e.pushBlob(repo, layer)
	if err != nil {
		return "", err
	}
	m, err := json.Marshal(manifest{
		SchemaVersion: 2,
		MediaType:     mediaTypeOCIManifest,
		Config:        descriptor{MediaType: mediaTypeOCIConfig, Digest: configDigest, Size: int64(len(config))},
		Layers:        []descriptor{{MediaType: mediaType, Digest: layerDigest, Size: int64(len(layer))}},
	})
	if err != nil {
		return "", err
	}
	if err := e.pushManifest(repo, tag, mediaTypeOCIManifest, m); err != nil {
		return "", err
	}
	return e.registry + "/" + repo + ":" + tag, nil
}

// pushLayoutImage pushes the image d of the OCI layout dir, an index or a
// manifest and everything it references, to repo:tag.
func (e *env) pushLayoutImage(dir string, d descriptor, repo, tag string) error {
	data, err := e.pushLayoutTree(dir, d, repo)
	if err != nil {
		return err
	}
	return e.pushManifest(repo, tag, d.MediaType, data)
}

func (e *env) pushLayoutTree(dir string, d descriptor, repo string) ([]byte, error) {
	data, err := readLayoutBlob(dir, d)
	if err != nil {
		return nil, err
	}
	switch d.MediaType {
	case mediaTypeOCIIndex, mediaTypeDockerList:
		var idx index
		if err := json.Unmarshal(data, &idx); err != nil {
			return nil, errors.Wrapf(err, "failed to parse index %s", d.Digest)
		}
		for _, m := range idx.Manifests {
			if _, err := e.pushLayoutTree(dir, m, repo); err != nil {
				return nil, err
			}
		}
	case mediaTypeOCIManifest, mediaTypeDockerSchema2:
		var m manifest
		if err := json.Unmarshal(data, &m); err != nil {
			return nil, errors.Wrapf(err, "failed to parse manifest %s", d.Digest)
		}
		for _, b := range append([]descriptor{m.Config}, m.Layers...) {
			blob, err := readLayoutBlob(dir, b)
			if err != nil {
				return nil, err
			}
			if _, err := e.pushBlob(repo, blob); err != nil {
				return nil, err
			}
		}
	default:
		_, err := e.pushBlob(repo, data)
		return data, err
	}
	return data, e.pushManifest(repo, d.Digest, d.MediaType, data)
}

func readLayoutBlob(dir string, d descriptor) ([]byte, error) {
	algo, hex, ok := strings.Cut(d.Digest, ":")
	if !ok {
		return nil, errors.Errorf("invalid digest %q in %s", d.Digest, dir)
	}
	data, err := os.ReadFile(filepath.Join(dir, "blobs", algo, hex))
	if err != nil {
		return nil, err
	}
	if got := digestOf(data); got != d.Digest {
		return nil, errors.Errorf("blob %s in %s has digest %s", d.Digest, dir, got)
	}
	return data, nil
}

// readLayoutIndex reads the OCI layout's index.json.
func readLayoutIndex(dir string) (index, error) {
	var idx index
	data, err := os.ReadFile(filepath.Join(dir, "index.json"))
	if err != nil {
		return idx, err
	}
	return idx, errors.Wrapf(json.Unmarshal(data, &idx), "failed to parse %s/index.json", dir)
}

// tarFile is one regular file of a layer tarFiles writes.
type tarFile struct {
	name string
	mode int64
	data []byte
}

// tarFiles is an uncompressed layer holding files (and their parent
// directories, which must be listed first as names ending in /).
func tarFiles(files []tarFile) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	mtime := time.Unix(0, 0)
	for _, f := range files {
		h := &tar.Header{Typeflag: tar.TypeReg, Name: f.name, Mode: f.mode, Size: int64(len(f.data)), ModTime: mtime}
		if strings.HasSuffix(f.name, "/") {
			h = &tar.Header{Typeflag: tar.TypeDir, Name: f.name, Mode: f.mode, ModTime: mtime}
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if h.Typeflag == tar.TypeReg {
			if _, err := tw.Write(f.data); err != nil {
				return nil, err
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
