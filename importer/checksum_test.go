package importer

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hikube/ferry/internal/testpeer/httpserver"
)

func TestParseChecksum(t *testing.T) {
	h64 := strings.Repeat("ab", 32)
	for _, tc := range []struct {
		in, alg, hex string
		bad          bool
	}{
		{in: "sha256:" + h64, alg: "sha256", hex: h64},
		{in: "SHA256:" + strings.ToUpper(h64), alg: "sha256", hex: h64},
		{in: "sha-256:" + h64, alg: "sha256", hex: h64},
		{in: " md5:" + strings.Repeat("0", 32) + " ", alg: "md5", hex: strings.Repeat("0", 32)},
		{in: "sha1:" + strings.Repeat("1", 40), alg: "sha1", hex: strings.Repeat("1", 40)},
		{in: "sha512:" + strings.Repeat("f", 128), alg: "sha512", hex: strings.Repeat("f", 128)},
		{in: h64, bad: true},
		{in: "sha256:" + h64[:63], bad: true},
		{in: "sha256:" + h64[:62] + "zz", bad: true},
		{in: "crc32:12345678", bad: true},
		{in: "sha512:" + h64, bad: true},
		{in: "", bad: true},
	} {
		alg, hex, err := ParseChecksum(tc.in)
		if tc.bad {
			if err == nil {
				t.Errorf("ParseChecksum(%q) accepted", tc.in)
			}
			continue
		}
		if err != nil || alg != tc.alg || hex != tc.hex {
			t.Errorf("ParseChecksum(%q) = %q, %q, %v", tc.in, alg, hex, err)
		}
	}
}

func TestFindInSumsFile(t *testing.T) {
	a := strings.Repeat("a", 64)
	b := strings.Repeat("b", 64)
	c := strings.Repeat("c", 128)
	m := strings.Repeat("d", 32)
	gnu := a + " *ubuntu-24.04-server-cloudimg-amd64.img\n" +
		b + "  ubuntu-24.04-server-cloudimg-amd64.vmdk\r\n" +
		"# comment\n\n" +
		c + "  debian-12-generic-amd64.qcow2\n" +
		m + "  ./sub/dir/file.raw\n"
	bsd := "SHA256 (ubuntu-24.04-server-cloudimg-amd64.img) = " + a + "\n" +
		"SHA512 (debian (weird) name.qcow2) = " + c + "\n" +
		"MD5 (x.raw) = " + m + "\n"
	signed := "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\n" + a + "  signed.img\n-----BEGIN PGP SIGNATURE-----\n" +
		strings.Repeat("Zm9vYmFy", 8) + "\n-----END PGP SIGNATURE-----\n"
	for _, tc := range []struct {
		file, name, alg, hex, err string
	}{
		{file: gnu, name: "ubuntu-24.04-server-cloudimg-amd64.img", alg: "sha256", hex: a},
		{file: gnu, name: "ubuntu-24.04-server-cloudimg-amd64.vmdk", alg: "sha256", hex: b},
		{file: gnu, name: "debian-12-generic-amd64.qcow2", alg: "sha512", hex: c},
		{file: gnu, name: "file.raw", alg: "md5", hex: m},
		{file: gnu, name: "sub/dir/file.raw", alg: "md5", hex: m},
		{file: gnu, name: "missing.img", err: "no entry for \"missing.img\" among 4 entries"},
		{file: bsd, name: "ubuntu-24.04-server-cloudimg-amd64.img", alg: "sha256", hex: a},
		{file: bsd, name: "debian (weird) name.qcow2", alg: "sha512", hex: c},
		{file: bsd, name: "x.raw", alg: "md5", hex: m},
		{file: signed, name: "signed.img", alg: "sha256", hex: a},
		{file: "hello world\n", name: "x", err: "no checksum lines"},
		{file: a + "  a/x.img\n" + b + "  b/x.img\n", name: "x.img", err: "several entries"},
		{file: a + "  a/x.img\n" + a + "  b/x.img\n", name: "x.img", alg: "sha256", hex: a},
	} {
		alg, hex, err := FindInSumsFile([]byte(tc.file), tc.name)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("FindInSumsFile(%q): %v, want error %q", tc.name, err, tc.err)
			}
			continue
		}
		if err != nil || alg != tc.alg || hex != tc.hex {
			t.Errorf("FindInSumsFile(%q) = %q, %q, %v", tc.name, alg, hex, err)
		}
	}
}

func FuzzSumsFile(f *testing.F) {
	f.Add([]byte(strings.Repeat("a", 64)+" *x.img\n"), "x.img")
	f.Add([]byte("SHA256 (x.img) = "+strings.Repeat("a", 64)+"\n"), "x.img")
	f.Add([]byte("SHA1 ((() = ) = \n\\"+strings.Repeat("0", 40)+"  \n"), "(")
	f.Fuzz(func(t *testing.T, data []byte, name string) {
		alg, hex, err := FindInSumsFile(data, name)
		if err != nil {
			return
		}
		if n, ok := hexLen[alg]; !ok || len(hex) != n || !isHex(hex) || strings.ToLower(hex) != hex {
			t.Fatalf("FindInSumsFile returned %q %q", alg, hex)
		}
		if _, _, err := ParseChecksum(alg + ":" + hex); err != nil {
			t.Fatalf("result does not parse: %v", err)
		}
	})
}

// --checksum-url: the sums file is fetched and the source's name looked
// up in it; mismatch is a typed error.
func TestChecksumURL(t *testing.T) {
	dir := t.TempDir()
	_, data := randomFile(t, dir, "image.qcow2", 1<<20+7, 5)
	os.WriteFile(filepath.Join(dir, "SHA256SUMS"), []byte(sha256Hex([]byte("x"))+"  other.img\n"+sha256Hex(data)+" *image.qcow2\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "BAD256SUMS"), []byte("SHA256 (image.qcow2) = "+sha256Hex([]byte("y"))+"\n"), 0o644)
	srv := httpserver.Start(t, dir)
	o := testOptions()
	o.ChecksumURL = srv.URL + "/SHA256SUMS"
	d, _, err := openReadComplete(srv.URL+"/image.qcow2", o)
	if err != nil || d.Checksum != "sha256:"+sha256Hex(data) {
		t.Fatalf("%+v %v", d, err)
	}
	o.ChecksumURL = srv.URL + "/BAD256SUMS"
	_, _, err = openReadComplete(srv.URL+"/image.qcow2", o)
	var ce *ChecksumError
	if !errors.As(err, &ce) || ce.Expected != sha256Hex([]byte("y")) {
		t.Fatalf("mismatch: %v", err)
	}
	// A local sums file for a local source.
	o.ChecksumURL = filepath.Join(dir, "SHA256SUMS")
	s := mustOpen(t, filepath.Join(dir, "image.qcow2"), o)
	if d := mustComplete(t, s); d.Checksum != "sha256:"+sha256Hex(data) {
		t.Fatal(d)
	}
	o.ChecksumURL = srv.URL + "/MISSING"
	if _, err := Open(context.Background(), srv.URL+"/image.qcow2", o); err == nil || !strings.Contains(err.Error(), "404") {
		t.Fatalf("missing sums file: %v", err)
	}
}

func TestLocalChecksum(t *testing.T) {
	dir := t.TempDir()
	p, data := randomFile(t, dir, "disk.raw", 3<<20+1, 9)
	o := testOptions()
	s := mustOpen(t, p, o)
	if d := mustComplete(t, s); d.SHA256 != "" {
		t.Fatalf("no checksum asked, yet hashed: %+v", d)
	}
	o.Checksum = "sha512:" + strings.Repeat("0", 128)
	s = mustOpen(t, "file://"+p, o)
	buf := make([]byte, 100)
	if _, err := s.ReadAt(buf, 5); err != nil || string(buf) != string(data[5:105]) {
		t.Fatal(err)
	}
	_, err := s.Complete(context.Background())
	var ce *ChecksumError
	if !errors.As(err, &ce) || ce.Alg != "sha512" || ce.Source != p {
		t.Fatalf("%v", err)
	}
	o.Checksum = "sha256:" + sha256Hex(data)
	s = mustOpen(t, p, o)
	if d := mustComplete(t, s); d.SHA256 != sha256Hex(data) || d.Checksum != o.Checksum {
		t.Fatalf("%+v", d)
	}
	if _, err := Open(context.Background(), filepath.Join(dir, "missing"), o); err == nil || !strings.Contains(err.Error(), "no such file") {
		t.Fatalf("missing: %v", err)
	}
}

func TestRedact(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"https://host/x.img", "https://host/x.img"},
		{"https://user:pw@host/x.img", "https://user:REDACTED@host/x.img"},
		{"https://user@host/x.img", "https://user@host/x.img"},
		{"https://b.s3.amazonaws.com/x.img?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIA%2F&X-Amz-Signature=abcdef&X-Amz-Security-Token=tok",
			"https://b.s3.amazonaws.com/x.img?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=REDACTED&X-Amz-Security-Token=REDACTED&X-Amz-Signature=REDACTED"},
		{"https://host/x?token=abc&v=2", "https://host/x?token=REDACTED&v=2"},
		{"https://host/x#frag", "https://host/x"},
		{"https://us er:pw@ho st/%zz?sig=1", "https://REDACTED@ho st/%zz"},
	} {
		if got := redactURL(tc.in); got != tc.want {
			t.Errorf("redactURL(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestOptionsValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		o    Options
		err  string
	}{
		{"defaults", Options{}, ""},
		{"connections", Options{Connections: 100}, "connections"},
		{"block size", Options{BlockSize: 100000}, "block size"},
		{"cache too small", Options{Connections: 4, BlockSize: 8 << 20, CacheSize: 16 << 20}, "cache size"},
		{"both checksums", Options{Checksum: "sha256:" + strings.Repeat("0", 64), ChecksumURL: "x"}, "not both"},
		{"bad checksum", Options{Checksum: "sha256:00"}, "hex digits"},
		{"bad header", Options{Headers: map[string][]string{"X Y": {"1"}}}, "invalid name"},
		{"header injection", Options{Headers: map[string][]string{"X": {"1\r\nEvil: 1"}}}, "line break"},
		{"scratch missing", Options{Scratch: "/nonexistent/dir"}, "scratch"},
	} {
		err := tc.o.Validate()
		if tc.err == "" {
			if err != nil {
				t.Errorf("%s: %v", tc.name, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.err)
		}
	}
	o := Options{}
	o.Validate()
	if o.Connections != DefaultConnections || o.BlockSize != DefaultBlockSize || o.CacheSize != DefaultCacheSize || o.retries != DefaultRetries {
		t.Fatalf("defaults %+v", o)
	}
}

func TestUnsupportedScheme(t *testing.T) {
	for _, src := range []string{"ftp://host/x", "gs://b/k", "s3://bucket", "file://otherhost/x"} {
		if _, err := Open(context.Background(), src, testOptions()); err == nil {
			t.Errorf("Open(%q) accepted", src)
		}
	}
}
