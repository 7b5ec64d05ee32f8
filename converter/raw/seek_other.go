//go:build !linux

package raw

func isENXIO(err error) bool { return false }
