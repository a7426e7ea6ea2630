package linkproxy

import (
	"bytes"
	"crypto/rand"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// echoServer answers every connection with what it reads, until EOF.
func echoServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	return ln.Addr().String()
}

func TestForwardAndCount(t *testing.T) {
	for _, tc := range []struct {
		name  string
		rate  float64
		delay time.Duration
		size  int
		// min is the least time the transfer may take through the link
		min time.Duration
	}{
		{name: "unlimited", size: 1 << 20},
		// 1 MiB each way at 4 MiB/s: at least 250 ms. Only a lower bound
		// is checked: a loaded machine may be slower, never faster.
		{name: "limited", rate: 4 << 20, size: 1 << 20, min: 250 * time.Millisecond},
		// The last byte leaves the client's side after 250 ms, reaches
		// the echo server 50 ms later, and comes back 50 ms after that.
		{name: "limited and delayed", rate: 4 << 20, delay: 50 * time.Millisecond, size: 1 << 20, min: 350 * time.Millisecond},
		{name: "delayed", delay: 50 * time.Millisecond, size: 1 << 20, min: 100 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := Start(echoServer(t), tc.rate, WithDelay(tc.delay))
			require.NoError(t, err)
			defer p.Close()
			c, err := net.Dial("tcp", p.Addr())
			require.NoError(t, err)
			defer c.Close()

			data := make([]byte, tc.size)
			_, err = rand.Read(data)
			require.NoError(t, err)
			start := time.Now()
			go func() {
				_, _ = c.Write(data)
				_ = c.(*net.TCPConn).CloseWrite()
			}()
			got, err := io.ReadAll(c)
			require.NoError(t, err)
			require.True(t, bytes.Equal(data, got), "echoed data differs")
			took := time.Since(start)
			t.Logf("%d bytes each way in %v", tc.size, took)
			require.GreaterOrEqual(t, took, tc.min)
			up, down := p.Bytes()
			require.Equal(t, int64(tc.size), up, "client to daemon")
			require.Equal(t, int64(tc.size), down, "daemon to client")
		})
	}
}

func TestInvalidRate(t *testing.T) {
	_, err := Start("127.0.0.1:1", -1)
	require.EqualError(t, err, "invalid rate -1 bytes/s")
}

func TestInvalidDelay(t *testing.T) {
	_, err := Start("127.0.0.1:1", 0, WithDelay(-time.Millisecond))
	require.EqualError(t, err, "invalid delay -1ms")
}

// TestDelayEachWay checks what the delay guarantees: no byte reaches the
// other end before the delay has passed since it was written, in either
// direction, so a request and its answer take at least twice the delay.
// Only lower bounds: a loaded machine may add time, never take it away.
func TestDelayEachWay(t *testing.T) {
	const delay = 40 * time.Millisecond
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	// The server reads one message of a known length at a time, records
	// when it arrived and answers with the same message.
	const msgLen = 64
	arrived := make(chan time.Time, 16)
	answered := make(chan time.Time, 16)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		buf := make([]byte, msgLen)
		for {
			// the first byte is the one that must wait the delay
			if _, err := io.ReadFull(c, buf[:1]); err != nil {
				return
			}
			arrived <- time.Now()
			if _, err := io.ReadFull(c, buf[1:]); err != nil {
				return
			}
			answered <- time.Now()
			if _, err := c.Write(buf); err != nil {
				return
			}
		}
	}()

	p, err := Start(ln.Addr().String(), 0, WithDelay(delay))
	require.NoError(t, err)
	defer p.Close()
	c, err := net.Dial("tcp", p.Addr())
	require.NoError(t, err)
	defer c.Close()

	for i := range 5 {
		req := bytes.Repeat([]byte{byte('a' + i)}, msgLen)
		sent := time.Now()
		_, err := c.Write(req)
		require.NoError(t, err)
		got := make([]byte, msgLen)
		_, err = io.ReadFull(c, got[:1])
		require.NoError(t, err)
		back := time.Now()
		_, err = io.ReadFull(c, got[1:])
		require.NoError(t, err)
		require.Equal(t, req, got)

		up := (<-arrived).Sub(sent)
		answer := <-answered
		down := back.Sub(answer)
		t.Logf("message %d: client to server %v, server to client %v, round trip %v", i, up, down, back.Sub(sent))
		require.GreaterOrEqual(t, up, delay, "message %d reached the server early", i)
		require.GreaterOrEqual(t, down, delay, "answer %d reached the client early", i)
		require.GreaterOrEqual(t, back.Sub(sent), 2*delay, "round trip %d", i)
	}
	// Read while the connection is open: what the client has read is
	// counted already.
	up, down := p.Bytes()
	require.Equal(t, int64(5*msgLen), up)
	require.Equal(t, int64(5*msgLen), down)
}

// TestDelayLineDoesNotWaitForDelivery: while no chunk can be delivered
// (the far end of a net.Pipe reads nothing yet), the line still takes
// inFlight chunks, so the reader goes on reading at the link's rate while
// earlier chunks are on their way. Then everything arrives, in order, and
// is counted.
func TestDelayLineDoesNotWaitForDelivery(t *testing.T) {
	near, far := net.Pipe()
	defer far.Close()
	var count atomic.Int64
	line := newDelayLine(near, &count)
	var want []byte
	now := time.Now()
	pushed := make(chan struct{})
	go func() {
		defer close(pushed)
		for i := range inFlight {
			b := bytes.Repeat([]byte{byte(i)}, 100)
			want = append(want, b...)
			line.push(b, now)
		}
	}()
	select {
	case <-pushed:
	case <-time.After(time.Minute):
		// a line that delivers before it takes the next chunk never
		// gets here: nothing reads the pipe yet
		t.Fatalf("push blocked while no chunk could be delivered")
	}
	done := make(chan []byte)
	go func() {
		got, _ := io.ReadAll(far)
		done <- got
	}()
	require.True(t, line.push(nil, now))
	line.close()
	near.Close()
	require.Equal(t, want, <-done)
	require.Equal(t, int64(len(want)), count.Load())
}

// TestDelayLineStopsOnFailedWrite: once a write to dst has failed, push
// reports it instead of queueing, and close returns.
func TestDelayLineStopsOnFailedWrite(t *testing.T) {
	near, far := net.Pipe()
	far.Close()
	var count atomic.Int64
	line := newDelayLine(near, &count)
	require.True(t, line.push([]byte("x"), time.Now()))
	<-line.failed
	require.False(t, line.push([]byte("y"), time.Now()))
	line.close()
	require.Zero(t, count.Load())
}

// TestSendKeepsRate: send books chunks back to back at the rate, from the
// first chunk's read time, and an idle link saves up no time; with a delay
// each chunk is due its send time plus the delay, so the delay adds to
// the end of a transfer once, not per chunk.
func TestSendKeepsRate(t *testing.T) {
	l := &link{rate: 1 << 20} // 1 MiB/s: a 32 KiB chunk takes 31.25 ms
	t0 := time.Unix(1000, 0)
	per := time.Duration(float64(chunk) / (1 << 20) * float64(time.Second))
	for i := range 32 {
		require.Equal(t, t0.Add(time.Duration(i+1)*per), l.send(chunk, t0), "chunk %d", i)
	}
	// an idle second later: sent one chunk's time after it was read
	later := t0.Add(10 * time.Second)
	require.Equal(t, later.Add(per), l.send(chunk, later))
	require.Equal(t, later, (&link{}).send(chunk, later), "an unlimited link sends at once")
}
