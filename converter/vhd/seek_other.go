//go:build !linux

package vhd

func isENXIO(err error) bool { return false }
