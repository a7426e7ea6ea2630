package linkproxy

import (
	"bytes"
	"crypto/rand"
	"io"
	"net"
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
		name string
		rate float64
		size int
		// min is the least time the transfer may take through the link
		min time.Duration
	}{
		{name: "unlimited", size: 1 << 20},
		// 1 MiB each way at 4 MiB/s: at least 250 ms. Only a lower bound
		// is checked: a loaded machine may be slower, never faster.
		{name: "limited", rate: 4 << 20, size: 1 << 20, min: 250 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := Start(echoServer(t), tc.rate)
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
			require.GreaterOrEqual(t, time.Since(start), tc.min)
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
