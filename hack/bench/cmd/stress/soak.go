package main

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"time"

	"github.com/lazylocal/buildkit/hack/bench/scenario"
)

// soak runs lazy imports of the directory back to back on daemon 0, two at
// a time, for cfg.soak, while a build on daemon 1 exports to the directory
// with reset=true every cfg.resetEvery. Each reset build adds about 1 MB of
// new blobs (its job stage is new); a reset that cleans up removes the
// previous ones. It
// prints, after every reset, whether it skipped its cleanup and the
// directory's size, and returns the number of builds that did not end as
// documented.
func (r *runner) soak(ctx context.Context) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, r.cfg.soak)
	defer cancel()
	var (
		mu      sync.Mutex
		imports []*job
		wg      sync.WaitGroup
	)
	for w := range 2 {
		wg.Go(func() {
			for n := 0; ctx.Err() == nil; n++ {
				j := &job{round: 1 + w, index: n, daemon: 0, role: roleImport, variants: []int{n % 2},
					dir: filepath.Join(r.s.Dir, fmt.Sprintf("soak%d", w), fmt.Sprintf("build%d", n))}
				r.build(ctx, j, r.importAttrs())
				if ctx.Err() == nil {
					mu.Lock()
					imports = append(imports, j)
					mu.Unlock()
				}
			}
		})
	}
	fmt.Printf("\nreset  at      cleanup  directory\n")
	start := time.Now()
	bad, resets, skipped := 0, 0, 0
	var last, peak int64
	for k := 0; ; k++ {
		select {
		case <-ctx.Done():
		case <-time.After(r.cfg.resetEvery):
		}
		if ctx.Err() != nil {
			break
		}
		j := &job{round: 0, index: 100 + k, daemon: 1, role: roleReset, variants: []int{k % 2}, noise: scenario.MB,
			dir: filepath.Join(r.s.Dir, "soak-reset", fmt.Sprintf("build%d", k))}
		r.build(context.WithoutCancel(ctx), j, r.importAttrs())
		if !j.kind.Expected() {
			bad++
		}
		resets++
		cleanup := "done"
		if j.skipped {
			skipped++
			cleanup = "skipped"
		}
		size, err := scenario.DirBytes(r.cache)
		if err != nil {
			return bad, err
		}
		last, peak = size, max(peak, size)
		fmt.Printf("%-6d %-7s %-8s %.1f MB\n", k+1, time.Since(start).Round(time.Second), cleanup, float64(size)/scenario.MB)
	}
	wg.Wait()
	ok := 0
	for _, j := range imports {
		if j.kind == KindOK {
			ok++
		} else if !j.kind.Expected() {
			bad++
		}
	}
	fmt.Printf("\nsoak %s: %d lazy builds, %d ok; %d resets, %d skipped their cleanup; directory %.1f MB at the end, %.1f MB at most\n",
		r.cfg.soak, len(imports), ok, resets, skipped, float64(last)/scenario.MB, float64(peak)/scenario.MB)
	return bad, nil
}
