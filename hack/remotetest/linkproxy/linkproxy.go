// Package linkproxy stands for the network between a build client and a
// remote builder: a TCP proxy on loopback that forwards every connection to
// the daemon, limits each direction to a rate shared by all connections,
// optionally delays each direction by a fixed one-way latency, and counts
// the bytes it carries each way. TLS passes through it as it is.
package linkproxy

import (
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// chunk is the most the proxy reads before it waits for the link: small
// enough that the rate holds over a few milliseconds.
const chunk = 32 << 10

// Proxy forwards connections from its loopback address to a target.
type Proxy struct {
	ln     net.Listener
	target string
	// up is client to daemon, down daemon to client.
	up, down link
	wg       sync.WaitGroup
	mu       sync.Mutex
	conns    map[net.Conn]struct{}
}

// link is one direction of the network: its byte count, its one-way delay
// and, when rate is positive, the time until which it is busy sending what
// it was given.
type link struct {
	rate  float64 // bytes per second; 0 is unlimited
	delay time.Duration
	bytes atomic.Int64
	mu    sync.Mutex
	busy  time.Time
}

// Option configures a Proxy.
type Option func(*Proxy) error

// WithDelay adds a one-way latency of d to each direction: every byte is
// delivered d after the link has sent it, so that a request and its answer
// take at least 2*d (a round trip of 20 ms is WithDelay(10ms)). The delay
// does not lower the rate: bytes sent while earlier ones are still on
// their way go on being read, as on a real link.
func WithDelay(d time.Duration) Option {
	return func(p *Proxy) error {
		if d < 0 {
			return fmt.Errorf("invalid delay %v", d)
		}
		p.up.delay, p.down.delay = d, d
		return nil
	}
}

// Start listens on a new port of 127.0.0.1 and forwards to target
// (host:port). rate is the limit of each direction in bytes per second;
// 0 means unlimited.
func Start(target string, rate float64, opts ...Option) (*Proxy, error) {
	if rate < 0 {
		return nil, fmt.Errorf("invalid rate %v bytes/s", rate)
	}
	p := &Proxy{target: target, conns: map[net.Conn]struct{}{}}
	p.up.rate, p.down.rate = rate, rate
	for _, o := range opts {
		if err := o(p); err != nil {
			return nil, err
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("failed to listen on loopback: %w", err)
	}
	p.ln = ln
	p.wg.Add(1)
	go p.serve()
	return p, nil
}

// Addr is the proxy's host:port.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Bytes returns what the proxy has carried so far: client to daemon (up)
// and daemon to client (down). A chunk is counted before it is written, so
// once a peer has read a byte it is in the count.
func (p *Proxy) Bytes() (up, down int64) { return p.up.bytes.Load(), p.down.bytes.Load() }

// Close stops listening, closes every forwarded connection and waits for
// the proxy's goroutines to end.
func (p *Proxy) Close() {
	_ = p.ln.Close()
	p.mu.Lock()
	for c := range p.conns {
		c.Close()
	}
	p.conns = nil
	p.mu.Unlock()
	p.wg.Wait()
}

func (p *Proxy) serve() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.wg.Add(1)
		go p.forward(c)
	}
}

func (p *Proxy) forward(client net.Conn) {
	defer p.wg.Done()
	daemon, err := net.Dial("tcp", p.target)
	if err != nil {
		client.Close()
		return
	}
	if !p.track(client, daemon) {
		return
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); p.up.copy(daemon, client) }()
	go func() { defer wg.Done(); p.down.copy(client, daemon) }()
	wg.Wait()
	p.untrack(client, daemon)
}

// copy moves src to dst through the link until src ends, then passes the
// half-close on so that dst sees the end too.
func (l *link) copy(dst, src net.Conn) {
	if l.delay > 0 {
		l.copyDelayed(dst, src)
		return
	}
	buf := make([]byte, chunk)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			time.Sleep(time.Until(l.send(n, time.Now())))
			if werr := writeCounted(dst, buf[:n], &l.bytes); werr != nil {
				return
			}
		}
		if err != nil {
			break
		}
	}
	closeWrite(dst)
}

// copyDelayed is copy through a delay line: a chunk read from src is
// stamped with the time it reaches the other end, the time the link has
// sent it plus the delay, and a second goroutine writes it to dst at that
// time. The reader does not wait for the chunks before it to arrive, so
// the delay costs no throughput while fewer than inFlight chunks are on
// their way; the end of src reaches dst after the delay too.
func (l *link) copyDelayed(dst, src net.Conn) {
	line := newDelayLine(dst, &l.bytes)
	defer line.close()
	for {
		buf := make([]byte, chunk)
		n, err := src.Read(buf)
		if n > 0 {
			sent := l.send(n, time.Now())
			time.Sleep(time.Until(sent))
			if !line.push(buf[:n], sent.Add(l.delay)) {
				// dst failed: nothing more can reach it
				closeRead(src)
				return
			}
		}
		if err != nil {
			line.push(nil, time.Now().Add(l.delay))
			return
		}
	}
}

// inFlight bounds the chunks a delay line holds: with 32 KiB chunks, 8 MiB
// per direction and connection, more than a 25 MB/s link carries in 300 ms.
const inFlight = 256

// delayLine delivers chunks to dst, each at its due time, in order.
type delayLine struct {
	q      chan delayed
	failed chan struct{} // closed when a write to dst fails
	done   chan struct{} // closed when the writer has ended
}

// delayed is a chunk and when it may be written; nil data is the end of
// the stream, passed on as a half-close.
type delayed struct {
	data []byte
	due  time.Time
}

func newDelayLine(dst net.Conn, count *atomic.Int64) *delayLine {
	d := &delayLine{q: make(chan delayed, inFlight), failed: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(d.done)
		for c := range d.q {
			time.Sleep(time.Until(c.due))
			if c.data == nil {
				closeWrite(dst)
				continue
			}
			if err := writeCounted(dst, c.data, count); err != nil {
				close(d.failed)
				for range d.q {
					// drop what is still on its way to a dead end
				}
				return
			}
		}
	}()
	return d
}

// push queues data for delivery at due; it waits only while the line is
// full, and reports false once a write to dst has failed.
func (d *delayLine) push(data []byte, due time.Time) bool {
	select {
	case <-d.failed:
		// the drain below would take the chunk: tell the reader at once
		return false
	default:
	}
	select {
	case d.q <- delayed{data: data, due: due}:
		return true
	case <-d.failed:
		return false
	}
}

// close waits until everything pushed has been delivered or dropped.
func (d *delayLine) close() {
	close(d.q)
	<-d.done
}

// send books n bytes read at now on the link and returns when the link
// has sent them: after what it was given before, at the rate; an idle link
// saves up no time for later. An unlimited link sends at once.
func (l *link) send(n int, now time.Time) time.Time {
	if l.rate <= 0 {
		return now
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.busy.Before(now) {
		l.busy = now
	}
	l.busy = l.busy.Add(time.Duration(float64(n) / l.rate * float64(time.Second)))
	return l.busy
}

func closeWrite(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
	}
}

func closeRead(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.CloseRead()
	}
}

func (p *Proxy) track(conns ...net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conns == nil {
		for _, c := range conns {
			c.Close()
		}
		return false
	}
	for _, c := range conns {
		p.conns[c] = struct{}{}
	}
	return true
}

func (p *Proxy) untrack(conns ...net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range conns {
		c.Close()
		delete(p.conns, c)
	}
}

// writeCounted writes b to dst, counting it first and taking back what the
// write did not carry.
func writeCounted(dst net.Conn, b []byte, count *atomic.Int64) error {
	count.Add(int64(len(b)))
	w, err := dst.Write(b)
	count.Add(int64(w - len(b)))
	return err
}
