package vdi

import (
	"errors"
	"syscall"
)

// isENXIO: SEEK_DATA found no data after the offset.
func isENXIO(err error) bool { return errors.Is(err, syscall.ENXIO) }
