package importer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"
)

// backend opens byte ranges of one pinned remote object. It returns
// permanent(err) for what retrying cannot fix (a 404, a changed object);
// anything else is taken as transient by the retry decorator.
type backend interface {
	// openRange returns a body yielding the bytes [off, off+n) of the
	// object as pinned at open time.
	openRange(ctx context.Context, off, n int64) (io.ReadCloser, error)
	// String names the object, redacted, for messages.
	String() string
}

// stats are the counters reported in Digests.
type stats struct {
	bytes, requests, retries atomic.Int64
}

// fetcher reads ranges of a backend into memory, retrying transient
// errors with backoff and resuming from the exact byte where a transfer
// broke off. It is the retry decorator: restic-style, everything is
// retried except errors marked permanent.
type fetcher struct {
	be        backend
	st        *stats
	retries   int
	base      time.Duration // first backoff
	raMax     time.Duration // cap on Retry-After
	stall     time.Duration // no-progress timeout per request
	onAttempt func()        // test hook
}

// errShort reports a body that ended before the range did (dropped
// connection, wrong Content-Length).
var errShort = errors.New("unexpected EOF: body ended early")

// fetch fills buf with the bytes at off. first, if not nil, is an already
// open body for that range (the probe request's); it is consumed first.
// filled, if not nil, is told how much of buf holds data each time more
// arrives, while those bytes are still in the CPU cache.
func (f *fetcher) fetch(ctx context.Context, off int64, buf []byte, first io.ReadCloser, filled func(int)) error {
	done := 0
	attempt := 0
	for {
		var err error
		if first != nil {
			done, err = f.readBody(first, buf, done, filled)
			first = nil
		} else {
			done, err = f.once(ctx, off, buf, done, filled)
		}
		if err == nil {
			return nil
		}
		at := off + int64(done)
		rangeDesc := fmt.Sprintf("range %d-%d", at, off+int64(len(buf))-1)
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
		if isPermanent(err) {
			return fmt.Errorf("fetch %s: %s: %w", f.be, rangeDesc, err)
		}
		if attempt >= f.retries {
			if attempt > 0 {
				return fmt.Errorf("fetch %s: %s: %w (after %d retries)", f.be, rangeDesc, err, attempt)
			}
			return fmt.Errorf("fetch %s: %s: %w", f.be, rangeDesc, err)
		}
		attempt++
		f.st.retries.Add(1)
		if err := sleepCtx(ctx, f.backoff(attempt, err)); err != nil {
			return err
		}
	}
}

// once makes one request for the rest of buf, [off+done, off+len(buf)),
// and reads what it can; it returns how much of buf is filled.
func (f *fetcher) once(ctx context.Context, off int64, buf []byte, done int, filled func(int)) (int, error) {
	if f.onAttempt != nil {
		f.onAttempt()
	}
	rctx, cancel := context.WithCancel(ctx)
	wd := newWatchdog(f.stall, cancel)
	f.st.requests.Add(1)
	body, err := f.be.openRange(rctx, off+int64(done), int64(len(buf)-done))
	if err != nil {
		wd.stop()
		if wd.fired.Load() && ctx.Err() == nil {
			return done, fmt.Errorf("%w (no response in %v)", errStalled, f.stall)
		}
		return done, err
	}
	wd.rc = body
	return f.readBody(wd, buf, done, filled)
}

var errStalled = errors.New("transfer stalled")

// watchdog cancels a request that makes no progress for d: no response
// headers, or no body bytes. Its reads report errStalled then, which is
// transient, rather than the request context's cancellation.
type watchdog struct {
	rc     io.ReadCloser
	d      time.Duration
	t      *time.Timer
	fired  atomic.Bool
	cancel context.CancelFunc
}

func newWatchdog(d time.Duration, cancel context.CancelFunc) *watchdog {
	w := &watchdog{d: d, cancel: cancel}
	w.t = time.AfterFunc(d, func() {
		w.fired.Store(true)
		cancel()
	})
	return w
}

// Read runs the timer only while it waits on the network: a body the
// caller pauses on (a sequential stream under backpressure) is not
// counted as stalled.
func (w *watchdog) Read(p []byte) (int, error) {
	w.t.Reset(w.d)
	n, err := w.rc.Read(p)
	w.t.Stop()
	if err != nil && err != io.EOF && w.fired.Load() {
		err = fmt.Errorf("%w (no data for %v)", errStalled, w.d)
	}
	return n, err
}

func (w *watchdog) stop() {
	w.t.Stop()
	w.cancel()
}

func (w *watchdog) Close() error {
	err := w.rc.Close()
	w.stop()
	return err
}

// readBody reads body into buf[done:] until buf is full, counting bytes,
// and closes it; it returns how much of buf is filled.
func (f *fetcher) readBody(body io.ReadCloser, buf []byte, done int, filled func(int)) (int, error) {
	defer body.Close()
	for done < len(buf) {
		// Read in pieces so the watchdog sees progress.
		end := min(len(buf), done+1<<20)
		n, err := body.Read(buf[done:end])
		done += n
		f.st.bytes.Add(int64(n))
		if n > 0 && filled != nil {
			filled(done)
		}
		if err == io.EOF {
			if done < len(buf) {
				return done, errShort
			}
			break
		}
		if err != nil {
			return done, err
		}
	}
	return done, nil
}

// backoff returns the delay before retry number attempt: the server's
// Retry-After if it gave one (capped), else exponential with jitter.
func (f *fetcher) backoff(attempt int, err error) time.Duration {
	var se *statusError
	if errors.As(err, &se) && se.retryAfter != "" {
		if d, ok := parseRetryAfter(se.retryAfter, time.Now()); ok {
			return min(d, f.raMax)
		}
	}
	d := f.base << min(attempt-1, 6)
	d = min(d, 15*time.Second)
	// ±20 % jitter so parallel connections do not retry in lockstep.
	return time.Duration(float64(d) * (0.8 + 0.4*rand.Float64()))
}

// parseRetryAfter reads delay-seconds or an HTTP date.
func parseRetryAfter(v string, now time.Time) (time.Duration, bool) {
	if s, err := strconv.ParseInt(v, 10, 64); err == nil && s >= 0 {
		// A huge value saturates (the caller caps the delay) rather than
		// overflowing into a negative one that would retry at once.
		return time.Duration(min(s, int64(math.MaxInt64/time.Second))) * time.Second, true
	}
	if t, err := http.ParseTime(v); err == nil {
		return max(t.Sub(now), 0), true
	}
	return 0, false
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return context.Cause(ctx)
	case <-t.C:
		return nil
	}
}
