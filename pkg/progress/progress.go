// Package progress holds a tiny concurrency-safe byte counter. Library
// packages only increment it; the CLI polls Load and renders.
package progress

import "sync/atomic"

// Counter counts bytes done out of a total. The zero value is ready; all
// methods are safe for concurrent use and do nothing on a nil *Counter, so
// libraries can take an optional counter without checks.
type Counter struct {
	done, total atomic.Int64
}

// Add records n more bytes done.
func (c *Counter) Add(n int64) {
	if c != nil {
		c.done.Add(n)
	}
}

// SetTotal sets the expected total (-1 or 0 when unknown).
func (c *Counter) SetTotal(n int64) {
	if c != nil {
		c.total.Store(n)
	}
}

// AddTotal grows the expected total, for work discovered as it goes.
func (c *Counter) AddTotal(n int64) {
	if c != nil {
		c.total.Add(n)
	}
}

// Load returns bytes done and the expected total.
func (c *Counter) Load() (done, total int64) {
	if c == nil {
		return 0, 0
	}
	return c.done.Load(), c.total.Load()
}
