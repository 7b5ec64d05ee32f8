package converter

import (
	"io"

	"github.com/hikube/ferry/converter/format"
	"github.com/hikube/ferry/converter/qcow2"
	"github.com/hikube/ferry/converter/vdi"
	"github.com/hikube/ferry/converter/vhd"
	"github.com/hikube/ferry/converter/vhdx"
	"github.com/hikube/ferry/converter/vmdk"
)

// adapt turns a format package's typed Open into the registry's, without
// leaking a typed nil into the interface on error.
func adapt[T format.Image](open func(format.File, format.Options) (T, error)) func(format.File, format.Options) (format.Image, error) {
	return func(f format.File, o format.Options) (format.Image, error) {
		img, err := open(f, o)
		if err != nil {
			return nil, err
		}
		return img, nil
	}
}

func register(t format.Type, probe func(io.ReaderAt, int64) bool, open func(format.File, format.Options) (format.Image, error)) Format {
	return Format{Type: t, Probe: probe, Open: open}
}

func init() {
	// Probe order: formats with a magic at offset 0 first; VHD, whose
	// fixed variant is recognised by a footer at the end, after them; then
	// ISO and raw (already in Formats).
	head := []Format{
		register(qcow2.Type, qcow2.Probe, adapt(qcow2.Open)),
		register(vmdk.Type, vmdk.Probe, adapt(vmdk.Open)),
		register(vhdx.Type, vhdx.Probe, adapt(vhdx.Open)),
		register(vdi.Type, vdi.Probe, adapt(vdi.Open)),
		register(vhd.Type, vhd.Probe, adapt(vhd.Open)),
	}
	Formats = append(head, Formats...)
}
