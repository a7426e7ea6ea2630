package main

import (
	"context"
	"maps"
	"strings"
	"sync"

	"github.com/containerd/containerd/v2/core/content"
	digest "github.com/opencontainers/go-digest"
	ocispecs "github.com/opencontainers/image-spec/specs-go/v1"
	"google.golang.org/grpc"
)

// countingStore is a content store that counts its own calls by the gRPC
// method that made them, "Content/Read: ReaderAt" for instance: the
// containerd content server the session runs calls Info for an Info
// request and also while it serves Read and Write, so the store's own
// count of Info is not the number of Info requests.
type countingStore struct {
	content.Store
	mu sync.Mutex
	n  map[string]int
	// infos counts the Info requests by digest
	infos map[digest.Digest]int
}

var _ content.Store = &countingStore{}

func newCountingStore(s content.Store) *countingStore {
	return &countingStore{Store: s, n: map[string]int{}, infos: map[digest.Digest]int{}}
}

// infoMethod is the request whose Info calls are counted by digest too.
const infoMethod = "containerd.services.content.v1.Content/Info"

func (s *countingStore) count(ctx context.Context, call string) string {
	m, _ := grpc.Method(ctx)
	m = strings.TrimPrefix(m, "/")
	s.mu.Lock()
	s.n[m+": "+call]++
	s.mu.Unlock()
	return m
}

// Counts returns a copy of the counts so far.
func (s *countingStore) Counts() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return maps.Clone(s.n)
}

// InfoDigests returns how often an Info request asked for each digest.
func (s *countingStore) InfoDigests() map[digest.Digest]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return maps.Clone(s.infos)
}

func (s *countingStore) Info(ctx context.Context, dgst digest.Digest) (content.Info, error) {
	if s.count(ctx, "Info") == infoMethod {
		s.mu.Lock()
		s.infos[dgst]++
		s.mu.Unlock()
	}
	return s.Store.Info(ctx, dgst)
}

func (s *countingStore) ReaderAt(ctx context.Context, desc ocispecs.Descriptor) (content.ReaderAt, error) {
	s.count(ctx, "ReaderAt")
	return s.Store.ReaderAt(ctx, desc)
}

func (s *countingStore) Writer(ctx context.Context, opts ...content.WriterOpt) (content.Writer, error) {
	s.count(ctx, "Writer")
	return s.Store.Writer(ctx, opts...)
}

func (s *countingStore) Status(ctx context.Context, ref string) (content.Status, error) {
	s.count(ctx, "Status")
	return s.Store.Status(ctx, ref)
}

func (s *countingStore) Abort(ctx context.Context, ref string) error {
	s.count(ctx, "Abort")
	return s.Store.Abort(ctx, ref)
}

func (s *countingStore) Update(ctx context.Context, info content.Info, fieldpaths ...string) (content.Info, error) {
	s.count(ctx, "Update")
	return s.Store.Update(ctx, info, fieldpaths...)
}

func (s *countingStore) Walk(ctx context.Context, fn content.WalkFunc, filters ...string) error {
	s.count(ctx, "Walk")
	return s.Store.Walk(ctx, fn, filters...)
}

func (s *countingStore) Delete(ctx context.Context, dgst digest.Digest) error {
	s.count(ctx, "Delete")
	return s.Store.Delete(ctx, dgst)
}
