package buildx

import (
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"
)

// linkProxy stands for the network between a client and a remote builder:
// a TCP proxy on loopback that forwards every connection to the daemon and
// counts the bytes it carries each way. TLS passes through it untouched.
type linkProxy struct {
	ln     net.Listener
	target string
	// up counts client-to-daemon bytes, down daemon-to-client bytes.
	up, down atomic.Int64
	wg       sync.WaitGroup
	mu       sync.Mutex
	conns    map[net.Conn]struct{}
}

// startProxy forwards a new loopback port to target until the test ends.
func startProxy(t *testing.T, target string) *linkProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	p := &linkProxy{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.serve()
	t.Cleanup(p.close)
	return p
}

// addr is host:port of the proxy.
func (p *linkProxy) addr() string { return p.ln.Addr().String() }

// bytes returns what the proxy has carried so far, client to daemon and
// daemon to client.
func (p *linkProxy) bytes() (up, down int64) { return p.up.Load(), p.down.Load() }

func (p *linkProxy) serve() {
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

func (p *linkProxy) forward(client net.Conn) {
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
	pipe := func(dst, src net.Conn, n *atomic.Int64) {
		defer wg.Done()
		_, _ = io.Copy(countingWriter{dst, n}, src)
		// pass the half-close on, so each side sees the other's EOF
		if tc, ok := dst.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
	}
	wg.Add(2)
	go pipe(daemon, client, &p.up)
	go pipe(client, daemon, &p.down)
	wg.Wait()
	p.untrack(client, daemon)
}

func (p *linkProxy) track(conns ...net.Conn) bool {
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

func (p *linkProxy) untrack(conns ...net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range conns {
		c.Close()
		delete(p.conns, c)
	}
}

func (p *linkProxy) close() {
	_ = p.ln.Close()
	p.mu.Lock()
	for c := range p.conns {
		c.Close()
	}
	p.conns = nil
	p.mu.Unlock()
	p.wg.Wait()
}

type countingWriter struct {
	w io.Writer
	n *atomic.Int64
}

func (c countingWriter) Write(b []byte) (int, error) {
	n, err := c.w.Write(b)
	c.n.Add(int64(n))
	return n, err
}
