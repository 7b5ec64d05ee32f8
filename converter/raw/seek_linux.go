package raw

import (
	"errors"
	"syscall"
)

func isENXIO(err error) bool { return errors.Is(err, syscall.ENXIO) }
