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

	"github.com/hikube/ferry/pkg/progress"
)

// gauge is what the renderer shows: a stage name and its counts. The
// library only increments counters; rendering lives here.
type gauge interface {
	Stage() string
	Load() (done, total int64)
}

// meter counts bytes for one stage; it is a converter.Progress.
type meter struct {
	stage string
	total atomic.Int64
	done  atomic.Int64
}

func (m *meter) Add(n int64)               { m.done.Add(n) }
func (m *meter) Stage() string             { return m.stage }
func (m *meter) Load() (done, total int64) { return m.done.Load(), m.total.Load() }

// counterGauge shows a library's progress.Counter.
type counterGauge struct {
	stage string
	*progress.Counter
}

func (c counterGauge) Stage() string { return c.stage }

// renderer draws a bar on a terminal, a plain line every interval
// elsewhere (Kubernetes Job logs), nothing when quiet. pick chooses the
// meter to show at each tick (conversion, or fetching while the size of a
// streamed image is unknown).
type renderer struct {
	pick     func() gauge
	w        io.Writer
	stop     chan struct{}
	wg       sync.WaitGroup
	interval time.Duration
}

// startProgress renders one meter.
func startProgress(m *meter, quiet bool) *renderer {
	return startProgressPick(quiet, func() gauge { return m })
}

// startProgressPick renders, at each tick, the gauge pick returns.
func startProgressPick(quiet bool, pick func() gauge) *renderer {
	r := &renderer{pick: pick, w: os.Stderr, stop: make(chan struct{}), interval: 5 * time.Second}
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

// Stop ends rendering; safe to call more than once.
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
	var shown gauge
	t := time.NewTicker(150 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-r.stop:
			if bar != nil {
				done, _ := shown.Load()
				bar.Set64(done)
				bar.Finish()
				fmt.Fprintln(r.w)
			}
			return
		case <-t.C:
			m := r.pick()
			done, total := m.Load()
			if total <= 0 {
				total = -1 // spinner: size unknown
			}
			if bar == nil || m != shown {
				if bar != nil {
					bar.Finish()
					fmt.Fprintln(r.w)
				}
				shown = m
				bar = progressbar.NewOptions64(total,
					progressbar.OptionSetWriter(r.w),
					progressbar.OptionSetDescription(m.Stage()),
					progressbar.OptionShowBytes(true),
					progressbar.OptionSetWidth(30),
					progressbar.OptionThrottle(100*time.Millisecond),
					progressbar.OptionShowCount(),
				)
			}
			if total > 0 && bar.GetMax64() != total {
				bar.ChangeMax64(total)
			}
			bar.Set64(done)
		}
	}
}

func (r *renderer) lines() {
	defer r.wg.Done()
	start := time.Now()
	t := time.NewTicker(r.interval)
	defer t.Stop()
	var last int64
	var lastM gauge
	lastT := start
	for {
		select {
		case <-r.stop:
			return
		case now := <-t.C:
			m := r.pick()
			done, total := m.Load()
			if m != lastM {
				last, lastM = 0, m
			}
			rate := float64(done-last) / now.Sub(lastT).Seconds()
			last, lastT = done, now
			of := ""
			if total > 0 {
				of = fmt.Sprintf(" / %s (%.1f%%)", humanBytes(total), 100*float64(done)/float64(total))
			}
			fmt.Fprintf(r.w, "%s: %s%s, %s/s, %s elapsed\n", m.Stage(),
				humanBytes(done), of, humanBytes(int64(rate)), now.Sub(start).Truncate(time.Second))
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
