//go:build !(cgo && libdeflate)

package format

// Inflater names the decompression implementation in use.
const Inflater = "go"

type deflateKind int

const (
	kindRaw deflateKind = iota
	kindZlib
)

func inflate(kind deflateKind, dst, src []byte) (int, error) {
	if kind == kindRaw {
		return goInflateRaw(dst, src)
	}
	return goInflateZlib(dst, src)
}
