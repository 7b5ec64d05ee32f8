//go:build !linux

package format

// Elsewhere SEEK_DATA is not wired: seeks fail and everything is data.
const (
	seekData = -1
	seekHole = -1
)

func isENXIO(err error) bool { return false }
