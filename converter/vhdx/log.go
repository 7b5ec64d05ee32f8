package vhdx

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"

	"github.com/hikube/ferry/converter/format"
)

// The VHDX log is a circular buffer of 4 KiB sectors holding entries that
// update metadata (BAT, headers) atomically. A non-zero LogGuid in the
// active header only means entries tagged with it may be valid; the image
// needs a replay if at least one valid entry exists. This file finds out
// exactly as qemu's vhdx_log_search does, without replaying anything: qemu
// opens a source read-only for convert and then refuses such an image, so
// refusing it here matches qemu, and an image whose LogGuid is set but
// whose log holds no valid entry reads as qemu reads it.

const (
	logSectorSize = 4096
	logHeaderSize = 64
	logDescSize   = 32
)

// errLogReplay is wrapped in the error for an image needing log replay.
var errLogReplay = format.Unsupportedf("vhdx: log replay needed: image was not closed cleanly; open it once with Hyper-V or qemu-img check -r all")

// checkLog validates the log fields of the active header and refuses an
// image with log entries to replay. It returns the log's span of the file.
func (img *Image) checkLog() (span, error) {
	h := img.hdr
	// qemu checks these even when the log is empty.
	if h.logOffset < miB || h.logOffset%miB != 0 {
		return span{}, format.Corruptf("vhdx: log offset %d is not a 1 MiB multiple past the header section", h.logOffset)
	}
	if h.logVersion != 0 {
		return span{}, format.Corruptf("vhdx: log version %d, only version 0 exists", h.logVersion)
	}
	if h.logOffset > uint64(format.MaxVirtualSize) {
		return span{}, format.Corruptf("vhdx: log offset %d is absurd", h.logOffset)
	}
	s := span{h.logOffset, h.logOffset + uint64(h.logLength)}
	if h.logGUID.isZero() || h.logLength == 0 {
		return s, nil
	}
	if h.logLength%miB != 0 {
		return s, format.Corruptf("vhdx: log length %d is not a multiple of 1 MiB", h.logLength)
	}
	l := logReader{img: img, off: int64(h.logOffset), length: int64(h.logLength)}
	var pos int64
	for {
		// Sectors past the end of the file read as zeros: no entry starts
		// there, and none after them before the buffer wraps.
		if l.off+pos >= img.fileSize {
			return s, nil
		}
		tail := pos
		valid, next, err := l.validateEntry(pos)
		if err != nil {
			return s, err
		}
		if valid {
			return s, fmt.Errorf("%w (a valid log entry with GUID %s is at log offset %d)", errLogReplay, h.logGUID, pos)
		}
		if next < tail {
			return s, nil // wrapped: the whole log was scanned
		}
		pos = next
	}
}

type logReader struct {
	img         *Image
	off, length int64
	// win caches a window of the log, to read it in large pieces.
	win      []byte
	winStart int64
}

const logWindow = 1 * miB

// sector returns the 4 KiB log sector at pos (a multiple of 4 KiB below
// length). Bytes past the end of the file read as zeros, as in qemu.
func (l *logReader) sector(pos int64) ([]byte, error) {
	if l.win == nil || pos < l.winStart || pos+logSectorSize > l.winStart+int64(len(l.win)) {
		n := min(logWindow, l.length-pos)
		if l.win == nil {
			l.win = make([]byte, min(logWindow, l.length))
		}
		w := l.win[:n]
		clear(w)
		start := l.off + pos
		if start < l.img.fileSize {
			m := min(int64(len(w)), l.img.fileSize-start)
			if err := l.img.readAt(w[:m], start, "log"); err != nil {
				return nil, err
			}
		}
		l.win, l.winStart = w, pos
	}
	i := pos - l.winStart
	return l.win[i : i+logSectorSize], nil
}

func (l *logReader) inc(pos int64) int64 {
	pos += logSectorSize
	if pos >= l.length {
		return 0
	}
	return pos
}

// validateEntry mirrors qemu's vhdx_validate_log_entry for the first entry
// of a sequence: it returns whether a valid entry starts at pos and where
// the scan continues. A header that is valid but followed by an invalid
// descriptor makes qemu fail the open; so does it here.
func (l *logReader) validateEntry(pos int64) (bool, int64, error) {
	sec, err := l.sector(pos)
	if err != nil {
		return false, 0, err
	}
	var hdr [logHeaderSize]byte
	copy(hdr[:], sec)
	entryLen := int64(binary.LittleEndian.Uint32(hdr[8:]))
	seq := binary.LittleEndian.Uint64(hdr[16:])
	descCount := int64(binary.LittleEndian.Uint32(hdr[24:]))
	if string(hdr[0:4]) != "loge" || entryLen > l.length || entryLen%logSectorSize != 0 || seq == 0 ||
		guid(hdr[32:48]) != l.img.hdr.logGUID || descCount*logDescSize > entryLen {
		return false, l.inc(pos), nil
	}
	stored := binary.LittleEndian.Uint32(hdr[4:])
	descSectors := (descCount + 2 + 127) / 128 // the header takes two descriptor slots
	total := entryLen / logSectorSize

	var crc uint32
	for k := int64(0); k < descSectors; k++ {
		sec, err := l.sector(pos)
		if err != nil {
			return false, 0, err
		}
		if k == 0 {
			var zero [4]byte
			crc = crc32.Update(crc, castagnoli, sec[:4])
			crc = crc32.Update(crc, castagnoli, zero[:])
			crc = crc32.Update(crc, castagnoli, sec[8:])
		} else {
			crc = crc32.Update(crc, castagnoli, sec)
		}
		// Descriptors of this sector: descriptor i is at 64+32*i of the
		// descriptor area.
		first := max(0, (k*logSectorSize-logHeaderSize)/logDescSize)
		last := min(descCount, ((k+1)*logSectorSize-logHeaderSize)/logDescSize)
		for i := first; i < last; i++ {
			d := sec[logHeaderSize+logDescSize*i-k*logSectorSize:][:logDescSize]
			if !descValid(d, seq) {
				return false, 0, format.Corruptf("vhdx: log entry at log offset %d (sequence %d): descriptor %d is invalid", pos, seq, i)
			}
		}
		pos = l.inc(pos)
	}
	for k := descSectors; k < total; k++ {
		sec, err := l.sector(pos)
		if err != nil {
			return false, 0, err
		}
		crc = crc32.Update(crc, castagnoli, sec)
		pos = l.inc(pos)
	}
	return crc == stored, pos, nil
}

func descValid(d []byte, seq uint64) bool {
	if binary.LittleEndian.Uint64(d[24:]) != seq || binary.LittleEndian.Uint64(d[16:])%logSectorSize != 0 {
		return false
	}
	switch string(d[:4]) {
	case "zero":
		return binary.LittleEndian.Uint64(d[8:])%logSectorSize == 0
	case "desc":
		return true
	}
	return false
}
