package main

import (
	"context"
	"maps"
	"sync"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// requestCounter is a span processor that counts the server spans started
// by name: for the otelgrpc stats handler a session serves with, one span
// per request, named after its full method without the leading slash.
type requestCounter struct {
	mu sync.Mutex
	n  map[string]int
}

var _ sdktrace.SpanProcessor = &requestCounter{}

func newRequestCounter() *requestCounter { return &requestCounter{n: map[string]int{}} }

// OnStart counts at the start, so that a request still running when the
// build returns (none should) is counted too.
func (c *requestCounter) OnStart(_ context.Context, s sdktrace.ReadWriteSpan) {
	if s.SpanKind() != trace.SpanKindServer {
		return
	}
	c.mu.Lock()
	c.n[s.Name()]++
	c.mu.Unlock()
}

func (c *requestCounter) OnEnd(sdktrace.ReadOnlySpan)      {}
func (c *requestCounter) Shutdown(context.Context) error   { return nil }
func (c *requestCounter) ForceFlush(context.Context) error { return nil }

// Counts returns a copy of the counts so far.
func (c *requestCounter) Counts() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return maps.Clone(c.n)
}

// newCountingTracerProvider samples every span, whatever its parent says:
// the daemon's requests carry its trace context, which may be unsampled.
func newCountingTracerProvider(c *requestCounter) *sdktrace.TracerProvider {
	return sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.AlwaysSample()), sdktrace.WithSpanProcessor(c))
}
