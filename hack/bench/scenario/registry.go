package scenario

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	ocispecs "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/pkg/errors"
)

// Registry is a docker-registry process serving plain HTTP on 127.0.0.1,
// with its storage and config in a directory of its own.
type Registry struct {
	// Addr is host:port, e.g. 127.0.0.1:40123.
	Addr string
	cmd  *exec.Cmd
	done chan error
	log  string
}

const registryConfig = `version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: %s
  delete:
    enabled: true
http:
  addr: %s
`

// StartRegistry starts bin on a free loopback port with its config and data
// under dir, and waits until it answers.
func StartRegistry(ctx context.Context, bin, dir string) (*Registry, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	cfg := filepath.Join(dir, "config.yml")
	if err := os.WriteFile(cfg, fmt.Appendf(nil, registryConfig, filepath.Join(dir, "data"), addr), 0o644); err != nil {
		return nil, errors.Wrap(err, "failed to write registry config")
	}
	logPath := filepath.Join(dir, "registry.log")
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, errors.Wrap(err, "failed to create registry log")
	}
	defer logf.Close()
	cmd := exec.Command(bin, "serve", cfg)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		return nil, errors.Wrapf(err, "failed to start %s", bin)
	}
	r := &Registry{Addr: addr, cmd: cmd, done: make(chan error, 1), log: logPath}
	go func() { r.done <- cmd.Wait() }()

	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get("http://" + addr + "/v2/")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return r, nil
			}
		}
		select {
		case err := <-r.done:
			return nil, errors.Errorf("registry exited (%v) before answering on %s; log: %s", err, addr, tail(logPath, 2000))
		case <-ctx.Done():
			r.Stop()
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			r.Stop()
			return nil, errors.Errorf("registry did not answer on %s within 30s; log: %s", addr, tail(logPath, 2000))
		}
	}
}

// Stop ends the registry process and waits for it.
func (r *Registry) Stop() {
	stopGroup(r.cmd, r.done, 10*time.Second)
}

// ImageSize is what a pushed image weighs in the registry.
type ImageSize struct {
	Layers       int
	Compressed   int64 // sum of layer blob sizes
	Uncompressed int64 // filled in by the caller that knows it; 0 otherwise
}

// Size reads repo:tag's manifest (following an index to its first
// manifest) and adds up its layer sizes.
func (r *Registry) Size(ctx context.Context, repo, tag string) (ImageSize, error) {
	m, err := r.Manifest(ctx, repo, tag)
	if err != nil {
		return ImageSize{}, err
	}
	s := ImageSize{Layers: len(m.Layers)}
	for _, l := range m.Layers {
		s.Compressed += l.Size
	}
	return s, nil
}

// Manifest reads repo:tag's manifest, following an index to its first
// manifest.
func (r *Registry) Manifest(ctx context.Context, repo, tag string) (ocispecs.Manifest, error) {
	accept := strings.Join([]string{
		ocispecs.MediaTypeImageManifest, ocispecs.MediaTypeImageIndex,
		"application/vnd.docker.distribution.manifest.v2+json",
		"application/vnd.docker.distribution.manifest.list.v2+json",
	}, ", ")
	ref := tag
	for range 2 {
		var m struct {
			ocispecs.Manifest
			Manifests []ocispecs.Descriptor `json:"manifests"`
		}
		if err := r.getJSON(ctx, fmt.Sprintf("http://%s/v2/%s/manifests/%s", r.Addr, repo, ref), accept, &m); err != nil {
			return ocispecs.Manifest{}, err
		}
		if len(m.Manifests) > 0 {
			ref = m.Manifests[0].Digest.String()
			continue
		}
		return m.Manifest, nil
	}
	return ocispecs.Manifest{}, errors.Errorf("%s/%s:%s: index nested too deep", r.Addr, repo, tag)
}

// Config reads the image config that m names from repo.
func (r *Registry) Config(ctx context.Context, repo string, m ocispecs.Manifest) (ocispecs.Image, error) {
	var img ocispecs.Image
	err := r.getJSON(ctx, fmt.Sprintf("http://%s/v2/%s/blobs/%s", r.Addr, repo, m.Config.Digest), "*/*", &img)
	return img, err
}

func (r *Registry) getJSON(ctx context.Context, url, accept string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return errors.WithStack(err)
	}
	req.Header.Set("Accept", accept)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return errors.Wrapf(err, "failed to get %s", url)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return errors.Errorf("GET %s: %s", url, resp.Status)
	}
	return errors.Wrapf(json.NewDecoder(resp.Body).Decode(v), "failed to decode %s", url)
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, errors.Wrap(err, "failed to find a free loopback port")
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
