//go:build !linux

package vdi

func isENXIO(err error) bool { return false }
