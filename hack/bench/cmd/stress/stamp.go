package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/pkg/errors"
)

// stampFormat prefixes every line of a build log with the seconds since
// the run started, so that the logs of concurrent builds, and the
// rotations, can be put on one timeline.
const stampFormat = "[%9.3f] "

// stampedWriter returns a file to hand a child process as its output;
// every line written to it goes to dst with its time of arrival. wait
// closes it, once the child has exited, and returns when all is copied.
func stampedWriter(dst io.Writer, start time.Time) (w *os.File, wait func(), err error) {
	pr, pw, err := os.Pipe()
	if err != nil {
		return nil, nil, errors.WithStack(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer pr.Close()
		s := bufio.NewScanner(pr)
		s.Buffer(make([]byte, 64*1024), 4*1024*1024)
		for s.Scan() {
			fmt.Fprintf(dst, stampFormat+"%s\n", time.Since(start).Seconds(), s.Text())
		}
		_, _ = io.Copy(io.Discard, pr) // a line too long: do not block the writer
	}()
	return pw, func() {
		pw.Close()
		<-done
	}, nil
}

// unstamp removes what stampedWriter added.
func unstamp(log string) string {
	lines := strings.Split(log, "\n")
	for i, l := range lines {
		if strings.HasPrefix(l, "[") {
			if _, rest, ok := strings.Cut(l, "] "); ok {
				lines[i] = rest
			}
		}
	}
	return strings.Join(lines, "\n")
}
