package main

import (
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"
)

// meter counts bytes for one stage; the library calls Add, the renderer
// reads it. Counting and rendering are separate so library code never
// prints.
type meter struct {
	stage string
	total atomic.Int64
	done  atomic.Int64
}

func (m *meter) Add(n int64) { m.done.Add(n) }

// renderer draws a bar on a terminal, a plain line every interval
// elsewhere (Kubernetes Job logs), nothing when quiet.
type renderer struct {
	m        *meter
	w        io.Writer
	stop     chan struct{}
	wg       sync.WaitGroup
	interval time.Duration
}

func startProgress(m *meter, quiet bool) *renderer {
	r := &renderer{m: m, w: os.Stderr, stop: make(chan struct{}), interval: 5 * time.Second}
	if quiet {
		return r
	}
	if v := os.Getenv("FERRY_PROGRESS_INTERVAL"); v != "" {
		if d, err := time.ParseDuration(v); err == nil && d > 0 {
			r.interval = d
		}
	}
	r.wg.Add(1)
	if term.IsTerminal(int(os.Stderr.Fd())) {
		go r.bar()
	} else {
		go r.lines()
	}
	return r
}

func (r *renderer) Stop() {
	select {
	case <-r.stop:
	default:
		close(r.stop)
	}
	r.wg.Wait()
}

func (r *renderer) bar() {
	defer r.wg.Done()
	var bar *progressbar.ProgressBar
	t := time.NewTicker(150 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-r.stop:
			if bar != nil {
				bar.Set64(r.m.done.Load())
				bar.Finish()
				fmt.Fprintln(r.w)
			}
			return
		case <-t.C:
			total := r.m.total.Load()
			if total <= 0 {
				continue
			}
			if bar == nil {
				bar = progressbar.NewOptions64(total,
					progressbar.OptionSetWriter(r.w),
					progressbar.OptionSetDescription(r.m.stage),
					progressbar.OptionShowBytes(true),
					progressbar.OptionSetWidth(30),
					progressbar.OptionThrottle(100*time.Millisecond),
					progressbar.OptionShowCount(),
				)
			}
			bar.Set64(r.m.done.Load())
		}
	}
}

func (r *renderer) lines() {
	defer r.wg.Done()
	start := time.Now()
	t := time.NewTicker(r.interval)
	defer t.Stop()
	var last int64
	lastT := start
	for {
		select {
		case <-r.stop:
			return
		case now := <-t.C:
			done, total := r.m.done.Load(), r.m.total.Load()
			rate := float64(done-last) / now.Sub(lastT).Seconds()
			last, lastT = done, now
			pct := 0.0
			if total > 0 {
				pct = 100 * float64(done) / float64(total)
			}
			fmt.Fprintf(r.w, "%s: %s / %s (%.1f%%), %s/s, %s elapsed\n", r.m.stage,
				humanBytes(done), humanBytes(total), pct, humanBytes(int64(rate)), now.Sub(start).Truncate(time.Second))
		}
	}
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
