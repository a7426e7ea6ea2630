package scenario

import (
	"bufio"
	"io"
	"strings"

	"github.com/pkg/errors"
)

// Extractions counts what buildctl --progress=plain says about layer
// extraction. The plain printer prints a status when it starts if it is
// slow and again when it is done, so one layer yields one or two lines.
type Extractions struct {
	Lines  int // lines naming "extracting sha256:"
	Layers int // distinct digests among them
}

// CountExtractions reads buildctl's plain progress output.
func CountExtractions(r io.Reader) (Extractions, error) {
	var e Extractions
	seen := map[string]bool{}
	s := bufio.NewScanner(r)
	s.Buffer(make([]byte, 64*1024), 4*1024*1024)
	for s.Scan() {
		_, rest, ok := strings.Cut(s.Text(), "extracting sha256:")
		if !ok {
			continue
		}
		e.Lines++
		dgst, _, _ := strings.Cut(rest, " ")
		if !seen[dgst] {
			seen[dgst] = true
			e.Layers++
		}
	}
	return e, errors.Wrap(s.Err(), "failed to read build progress")
}
