package importer

import (
	"bytes"
	"crypto/md5"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"fmt"
	"hash"
	"path"
	"strings"
	"sync"
)

// hexLen is the digest length in hex characters of each algorithm.
var hexLen = map[string]int{"md5": 32, "sha1": 40, "sha256": 64, "sha512": 128}

func newHash(alg string) hash.Hash {
	switch alg {
	case "md5":
		return md5.New()
	case "sha1":
		return sha1.New()
	case "sha256":
		return sha256.New()
	case "sha512":
		return sha512.New()
	}
	return nil
}

// ParseChecksum parses "ALG:HEX" (CDI's http.checksum form), ALG one of
// md5, sha1, sha256, sha512. The hex digest is returned lower-case.
func ParseChecksum(s string) (alg, hexsum string, err error) {
	a, h, ok := strings.Cut(strings.TrimSpace(s), ":")
	if !ok {
		return "", "", fmt.Errorf("checksum %q: want ALG:HEX (md5, sha1, sha256, sha512)", s)
	}
	alg = strings.ToLower(strings.ReplaceAll(a, "-", ""))
	n, ok := hexLen[alg]
	if !ok {
		return "", "", fmt.Errorf("checksum %q: unknown algorithm %q (want md5, sha1, sha256 or sha512)", s, a)
	}
	hexsum = strings.ToLower(strings.TrimSpace(h))
	if len(hexsum) != n {
		return "", "", fmt.Errorf("checksum %q: a %s digest has %d hex digits, got %d", s, alg, n, len(hexsum))
	}
	if _, err := hex.DecodeString(hexsum); err != nil {
		return "", "", fmt.Errorf("checksum %q: not hexadecimal", s)
	}
	return alg, hexsum, nil
}

// algForHexLen guesses the algorithm of a GNU-style line from its length.
func algForHexLen(n int) string {
	for a, l := range hexLen {
		if l == n {
			return a
		}
	}
	return ""
}

// FindInSumsFile finds name in a checksums file (SHA256SUMS, SHA512SUMS,
// MD5SUMS...) and returns its algorithm and lower-case hex digest. Both the
// GNU format ("HEX  name", "HEX *name") and the BSD format ("SHA256 (name)
// = HEX") are read; comments, blank lines and PGP armor are skipped. name
// matches an entry exactly (after "./" and "*" are dropped), or else by
// base name when exactly one digest matches that way.
func FindInSumsFile(data []byte, name string) (alg, hexsum string, err error) {
	want := cleanSumName(name)
	if want == "" {
		return "", "", fmt.Errorf("checksum file: no file name to look up")
	}
	type entry struct{ alg, hex, name string }
	var byBase []entry
	entries := 0
	inSig := false
	for line := range bytes.Lines(data) {
		l := strings.TrimRight(string(line), "\r\n")
		t := strings.TrimSpace(l)
		switch {
		case t == "-----BEGIN PGP SIGNATURE-----":
			inSig = true
			continue
		case t == "-----END PGP SIGNATURE-----":
			inSig = false
			continue
		case inSig, t == "", strings.HasPrefix(t, "#"), strings.HasPrefix(t, "-----BEGIN PGP"), strings.HasPrefix(t, "Hash:"):
			continue
		}
		a, h, n, ok := parseSumLine(l)
		if !ok {
			continue
		}
		entries++
		n = cleanSumName(n)
		if n == want {
			return a, h, nil
		}
		if path.Base(n) == path.Base(want) {
			byBase = append(byBase, entry{a, h, n})
		}
	}
	if len(byBase) > 0 {
		first := byBase[0]
		for _, e := range byBase[1:] {
			if e.alg != first.alg || e.hex != first.hex {
				return "", "", fmt.Errorf("checksum file: %q matches several entries with different digests (%s, %s)", name, first.name, e.name)
			}
		}
		return first.alg, first.hex, nil
	}
	if entries == 0 {
		return "", "", fmt.Errorf("checksum file: no checksum lines found (want \"HEX  name\" or \"SHA256 (name) = HEX\")")
	}
	return "", "", fmt.Errorf("checksum file: no entry for %q among %d entries", name, entries)
}

func cleanSumName(n string) string {
	n = strings.TrimPrefix(n, "*")
	for strings.HasPrefix(n, "./") {
		n = n[2:]
	}
	return n
}

// parseSumLine parses one line of either format.
func parseSumLine(l string) (alg, hexsum, name string, ok bool) {
	// BSD: "SHA256 (name) = hex". The name may hold parentheses: split on
	// the last ") = ".
	if i := strings.Index(l, " ("); i > 0 {
		if j := strings.LastIndex(l, ") = "); j > i {
			a := strings.ToLower(strings.ReplaceAll(l[:i], "-", ""))
			h := strings.ToLower(strings.TrimSpace(l[j+4:]))
			if n, known := hexLen[a]; known && len(h) == n && isHex(h) {
				return a, h, l[i+2 : j], true
			}
		}
	}
	// GNU: "hex  name" (text) or "hex *name" (binary); a leading backslash
	// marks an escaped name.
	s := strings.TrimPrefix(l, "\\")
	i := strings.IndexByte(s, ' ')
	if i <= 0 {
		return "", "", "", false
	}
	h := strings.ToLower(s[:i])
	a := algForHexLen(len(h))
	if a == "" || !isHex(h) {
		return "", "", "", false
	}
	rest := s[i+1:]
	if strings.HasPrefix(rest, " ") || strings.HasPrefix(rest, "*") {
		rest = rest[1:]
	}
	if rest == "" {
		return "", "", "", false
	}
	return a, h, rest, true
}

func isHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
			return false
		}
	}
	return true
}

// hasher computes the SHA-256 of a stream, plus the requested checksum's
// algorithm when it is another one; the two run on two cores.
type hasher struct {
	sha     hash.Hash
	alg     string    // requested algorithm, "" for none
	other   hash.Hash // nil when alg is "" or sha256
	n       int64
	wg      sync.WaitGroup
	expects string // expected hex, "" for none
}

func newHasher(alg, expected string) *hasher {
	h := &hasher{sha: sha256.New(), alg: alg, expects: expected}
	if alg != "" && alg != "sha256" {
		h.other = newHash(alg)
	}
	return h
}

// write hashes p; large blocks hash both digests in parallel.
func (h *hasher) write(p []byte) {
	h.n += int64(len(p))
	if h.other == nil {
		h.sha.Write(p)
		return
	}
	if len(p) < 256<<10 {
		h.sha.Write(p)
		h.other.Write(p)
		return
	}
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		h.other.Write(p)
	}()
	h.sha.Write(p)
	h.wg.Wait()
}

// sums returns the hex SHA-256, the requested digest as "alg:hex" ("" when
// none was requested), and a *ChecksumError when it does not match.
func (h *hasher) sums(source string) (sha, checksum string, err error) {
	sha = hex.EncodeToString(h.sha.Sum(nil))
	if h.alg == "" {
		return sha, "", nil
	}
	actual := sha
	if h.other != nil {
		actual = hex.EncodeToString(h.other.Sum(nil))
	}
	if h.expects != "" && actual != h.expects {
		return sha, "", &ChecksumError{Alg: h.alg, Expected: h.expects, Actual: actual, Source: source}
	}
	return sha, h.alg + ":" + actual, nil
}
