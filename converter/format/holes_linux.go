package format

import (
	"errors"
	"syscall"
)

const (
	seekData = 3 // SEEK_DATA
	seekHole = 4 // SEEK_HOLE
)

func isENXIO(err error) bool { return errors.Is(err, syscall.ENXIO) }
