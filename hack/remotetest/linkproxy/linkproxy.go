// Package linkproxy stands for the network between a build client and a
// remote builder: a TCP proxy on loopback that forwards every connection to
// the daemon, limits each direction to a rate shared by all connections,
// and counts the bytes it carries each way. TLS passes through it as it is.
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

// link is one direction of the network: its byte count and, when rate is
// positive, the time until which it is busy sending what it was given.
type link struct {
	rate  float64 // bytes per second; 0 is unlimited
	bytes atomic.Int64
	mu    sync.Mutex
	busy  time.Time
}

// Start listens on a new port of 127.0.0.1 and forwards to target
// (host:port). rate is the limit of each direction in bytes per second;
// 0 means unlimited.
func Start(target string, rate float64) (*Proxy, error) {
	if rate < 0 {
		return nil, fmt.Errorf("invalid rate %v bytes/s", rate)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("failed to listen on loopback: %w", err)
	}
	p := &Proxy{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	p.up.rate, p.down.rate = rate, rate
	p.wg.Add(1)
	go p.serve()
	return p, nil
}

// Addr is the proxy's host:port.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Bytes returns what the proxy has carried so far: client to daemon (up)
// and daemon to client (down).
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
	buf := make([]byte, chunk)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			l.wait(n)
			w, werr := dst.Write(buf[:n])
			l.bytes.Add(int64(w))
			if werr != nil {
				return
			}
		}
		if err != nil {
			break
		}
	}
	if tc, ok := dst.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
	}
}

// wait holds n bytes until the link has had the time to send them after
// what it was given before; an idle link saves up no time for later.
func (l *link) wait(n int) {
	if l.rate <= 0 {
		return
	}
	l.mu.Lock()
	now := time.Now()
	if l.busy.Before(now) {
		l.busy = now
	}
	l.busy = l.busy.Add(time.Duration(float64(n) / l.rate * float64(time.Second)))
	until := l.busy
	l.mu.Unlock()
	time.Sleep(time.Until(until))
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
