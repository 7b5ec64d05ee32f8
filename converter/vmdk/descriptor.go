package vmdk

import (
	"bytes"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/hikube/ferry/converter/format"
)

// maxDescriptorSize bounds a descriptor, standalone or embedded. qemu reads
// at most 1 MiB - 1; real descriptors are well under 4 KiB.
const maxDescriptorSize = 1 << 20

// maxExtents bounds the extent lines of a descriptor: a 62 TiB disk split in
// 2 GiB files has ~32k extents, but nothing real comes near 8192 and each
// extent costs a file descriptor.
const maxExtents = 8192

// descriptor is the parsed text of a VMDK descriptor.
type descriptor struct {
	version       int
	cid           uint32
	hasCID        bool
	parentCID     uint32
	hasParentCID  bool
	createType    string
	parentHint    string
	hasParentHint bool
	adapterType   string
	hwVersion     string
	toolsVersion  string
	extents       []extentLine
}

// extentLine is one "ACCESS SECTORS TYPE ["FILE" [OFFSET]]" line.
type extentLine struct {
	access    string
	sectors   int64
	typ       string
	file      string
	hasFile   bool
	offset    int64
	hasOffset bool
	line      int
}

// descriptorText returns b up to its first NUL as text, or false when b is
// not a descriptor: NUL padding is allowed only at the end (embedded
// descriptors are padded to sectors), and the text must be valid UTF-8
// without control characters other than tab, CR and LF.
func descriptorText(b []byte) (string, bool) {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		for _, c := range b[i:] {
			if c != 0 {
				return "", false
			}
		}
		b = b[:i]
	}
	if !isText(b) {
		return "", false
	}
	return string(b), true
}

// isText reports whether b is UTF-8 text without control characters other
// than tab, CR, LF (a UTF-8 BOM is fine).
func isText(b []byte) bool {
	for len(b) > 0 {
		c := b[0]
		if c < 0x80 {
			if c < 0x20 && c != '\t' && c != '\n' && c != '\r' || c == 0x7f {
				return false
			}
			b = b[1:]
			continue
		}
		r, n := utf8.DecodeRune(b)
		if r == utf8.RuneError && n <= 1 {
			// Cut in the middle of a rune only at the very end (a probe
			// buffer may end inside one).
			return len(b) < utf8.UTFMax && !utf8.FullRune(b)
		}
		b = b[n:]
	}
	return true
}

// parseDescriptor parses descriptor text. Like qemu it ignores lines it
// does not know, but an extent line it cannot parse is an error rather than
// silently dropped: dropping it would shift every later extent. Embedded
// descriptors (lenient) only inform: their extent lines are not used, so
// bad ones are skipped.
func parseDescriptor(text string, lenient bool) (*descriptor, error) {
	d := &descriptor{}
	for i, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(strings.TrimPrefix(line, "\ufeff"))
		if line == "" || line[0] == '#' {
			continue
		}
		acc := line
		if i := strings.IndexAny(line, " \t"); i >= 0 {
			acc = line[:i]
		}
		if acc == "RW" || acc == "RDONLY" || acc == "NOACCESS" {
			if len(d.extents) >= maxExtents {
				if lenient {
					continue
				}
				return nil, format.Unsupportedf("vmdk descriptor lists more than %d extents", maxExtents)
			}
			e, err := parseExtentLine(line)
			if err != nil && lenient {
				continue
			}
			if err != nil {
				return nil, format.Corruptf("vmdk descriptor line %d %q: %v", i+1, clip(line), err)
			}
			e.line = i + 1
			d.extents = append(d.extents, e)
			continue
		}
		key, val, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		key = strings.TrimSpace(key)
		val = unquote(strings.TrimSpace(val))
		switch key {
		case "version":
			d.version, _ = strconv.Atoi(val)
		case "CID":
			if v, err := strconv.ParseUint(val, 16, 32); err == nil {
				d.cid, d.hasCID = uint32(v), true
			}
		case "parentCID":
			if v, err := strconv.ParseUint(val, 16, 32); err == nil {
				d.parentCID, d.hasParentCID = uint32(v), true
			}
		case "createType":
			d.createType = val
		case "parentFileNameHint":
			d.parentHint, d.hasParentHint = val, true
		case "ddb.adapterType":
			d.adapterType = val
		case "ddb.virtualHWVersion":
			d.hwVersion = val
		case "ddb.toolsVersion":
			d.toolsVersion = val
		}
	}
	return d, nil
}

func parseExtentLine(line string) (extentLine, error) {
	var e extentLine
	rest := line
	next := func() string {
		rest = strings.TrimLeft(rest, " \t")
		i := strings.IndexAny(rest, " \t")
		if i < 0 {
			i = len(rest)
		}
		tok := rest[:i]
		rest = rest[i:]
		return tok
	}
	e.access = next()
	secs := next()
	n, err := strconv.ParseInt(secs, 10, 64)
	if err != nil || n < 0 {
		return e, errorString("bad sector count " + strconv.Quote(secs))
	}
	e.sectors = n
	e.typ = next()
	if e.typ == "" {
		return e, errorString("no extent type")
	}
	rest = strings.TrimLeft(rest, " \t")
	if rest == "" {
		return e, nil
	}
	if rest[0] != '"' {
		return e, errorString("file name is not quoted")
	}
	end := strings.IndexByte(rest[1:], '"')
	if end < 0 {
		return e, errorString("unterminated file name")
	}
	e.file, e.hasFile = rest[1:1+end], true
	rest = strings.TrimSpace(rest[2+end:])
	if rest == "" {
		return e, nil
	}
	off := next()
	o, err := strconv.ParseInt(off, 10, 64)
	if err != nil || o < 0 {
		return e, errorString("bad offset " + strconv.Quote(off))
	}
	e.offset, e.hasOffset = o, true
	if strings.TrimSpace(rest) != "" {
		// VMware allows a trailing partition UUID on device extents only;
		// those are refused anyway, so anything else is noise.
		return e, errorString("unexpected text after the offset")
	}
	return e, nil
}

type errorString string

func (e errorString) Error() string { return string(e) }

func unquote(s string) string {
	if len(s) >= 2 && s[0] == '"' && s[len(s)-1] == '"' {
		return s[1 : len(s)-1]
	}
	return s
}

// clip shortens s for error messages.
func clip(s string) string {
	if len(s) > 120 {
		return s[:120] + "..."
	}
	return s
}
