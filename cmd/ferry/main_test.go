package main

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hikube/ferry/internal/testutil"
)

var ferryBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "ferry-cli")
	if err != nil {
		panic(err)
	}
	ferryBin = filepath.Join(dir, "ferry")
	if out, err := exec.Command("go", "build", "-o", ferryBin, ".").CombinedOutput(); err != nil {
		os.Stderr.Write(out)
		panic(err)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

type result struct {
	code           int
	stdout, stderr string
}

func ferry(t *testing.T, env []string, args ...string) result {
	t.Helper()
	cmd := exec.Command(ferryBin, args...)
	cmd.Env = append(os.Environ(), env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return result{code, out.String(), errb.String()}
}

func fixture(t *testing.T, dir string, fmtArgs ...string) string {
	t.Helper()
	base := filepath.Join(dir, "base.raw")
	testutil.Pattern(t, base, 20<<20+4096, 3)
	img := filepath.Join(dir, "disk.img")
	testutil.QemuImg(t, append(append([]string{"convert", "-q", "-f", "raw"}, fmtArgs...), base, img)...)
	os.Remove(base)
	return img
}

func TestConvertJSONReport(t *testing.T) {
	dir := t.TempDir()
	img := fixture(t, dir, "-O", "qcow2", "-c")
	want, size := testutil.ReferenceSHA256(t, img, "qcow2")
	dst := filepath.Join(dir, "out.raw")
	r := ferry(t, nil, "convert", img, dst, "--output", "json")
	if r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	var rep map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		t.Fatalf("stdout is not JSON: %v\n%s", err, r.stdout)
	}
	for _, k := range []string{"format", "virtual_size", "allocated_bytes", "bytes_written", "raw_sha256", "duration_seconds"} {
		if _, ok := rep[k]; !ok {
			t.Errorf("report lacks %q", k)
		}
	}
	if rep["format"] != "qcow2" || rep["raw_sha256"] != want || int64(rep["virtual_size"].(float64)) != size {
		t.Fatalf("report %v, want qcow2 %d bytes sha256 %s", rep, size, want)
	}
	if got, _ := testutil.SHA256File(t, dst); got != want {
		t.Fatal("written file differs from qemu-img's RAW")
	}
}

func TestConvertToStdout(t *testing.T) {
	dir := t.TempDir()
	img := fixture(t, dir, "-O", "vmdk", "-o", "subformat=streamOptimized")
	want, _ := testutil.ReferenceSHA256(t, img, "vmdk")
	cmd := exec.Command(ferryBin, "convert", "-q", img, "-")
	out, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "stdout.raw")
	os.WriteFile(p, out, 0o644)
	if got, _ := testutil.SHA256File(t, p); got != want {
		t.Fatal("stdout stream differs from qemu-img's RAW")
	}
}

func TestInspect(t *testing.T) {
	dir := t.TempDir()
	img := fixture(t, dir, "-O", "qcow2", "-o", "cluster_size=128k")
	r := ferry(t, nil, "inspect", img, "--output", "json")
	if r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	var info map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &info); err != nil {
		t.Fatal(err)
	}
	if info["format"] != "qcow2" || info["cluster_size"].(float64) != 128<<10 || info["virtual_size"].(float64) != 20<<20+4096 {
		t.Fatalf("inspect = %v", info)
	}
	r = ferry(t, nil, "inspect", img)
	if r.code != 0 || !strings.Contains(r.stdout, "file format:       qcow2") {
		t.Fatalf("text inspect: %d %s %s", r.code, r.stdout, r.stderr)
	}
}

func TestFailuresLeaveNothing(t *testing.T) {
	dir := t.TempDir()
	good := fixture(t, dir, "-O", "qcow2")
	st, _ := os.Stat(good)
	trunc := testutil.Truncated(t, good, st.Size()/2)
	outside := t.TempDir()
	testutil.QemuImg(t, "create", "-q", "-f", "raw", filepath.Join(outside, "secret.raw"), "1M")
	unsafe := filepath.Join(dir, "unsafe.qcow2")
	testutil.QemuImg(t, "create", "-q", "-f", "qcow2", "-u", "-b", filepath.Join(outside, "secret.raw"), "-F", "raw", unsafe, "1M")

	// An OVA whose manifest gives another digest for the disk.
	ovaSrc := t.TempDir()
	os.WriteFile(filepath.Join(ovaSrc, "vm.ovf"), []byte("<Envelope/>"), 0o644)
	os.WriteFile(filepath.Join(ovaSrc, "vm.mf"), []byte("SHA256(disk.qcow2)= "+strings.Repeat("0", 64)+"\n"), 0o644)
	testutil.Run(t, "cp", good, filepath.Join(ovaSrc, "disk.qcow2"))
	badOVA := filepath.Join(dir, "bad.ova")
	testutil.Run(t, "tar", "-cf", badOVA, "-C", ovaSrc, "vm.ovf", "vm.mf", "disk.qcow2")

	cases := []struct {
		name     string
		args     []string
		code     int
		contains string
	}{
		{"ova-manifest-mismatch", []string{"convert", badOVA, "OUT"}, exitChecksum, "per the archive's manifest vm.mf"},
		{"truncated", []string{"convert", trunc, "OUT"}, exitBadImage, "convert"},
		{"unsafe-backing", []string{"convert", unsafe, "OUT"}, exitBadImage, "unsafe file reference"},
		{"missing-source", []string{"convert", filepath.Join(dir, "nope.qcow2"), "OUT"}, exitFailure, "no such file"},
		{"usage", []string{"convert", good}, exitUsage, "expects 2 argument"},
		{"bad-flag", []string{"convert", "--bogus", good, "OUT"}, exitUsage, "unknown flag"},
		{"bad-format", []string{"convert", "-f", "qed", good, "OUT"}, exitUsage, "unknown format"},
		{"wrong-format", []string{"convert", "-f", "vmdk", good, "OUT"}, exitBadImage, "vmdk"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			out := t.TempDir()
			args := append([]string(nil), c.args...)
			for i, a := range args {
				if a == "OUT" {
					args[i] = filepath.Join(out, "out.raw")
				}
			}
			r := ferry(t, nil, args...)
			if r.code != c.code {
				t.Fatalf("exit %d, want %d; stderr: %s", r.code, c.code, r.stderr)
			}
			lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
			if len(lines) != 1 || !strings.HasPrefix(lines[0], "ferry: ") || !strings.Contains(lines[0], c.contains) {
				t.Fatalf("stderr should be one line naming the cause (%q): %q", c.contains, r.stderr)
			}
			if entries, _ := os.ReadDir(out); len(entries) != 0 {
				t.Fatalf("failed conversion left %v", entries)
			}
		})
	}
}

func TestProgressLines(t *testing.T) {
	dir := t.TempDir()
	img := fixture(t, dir, "-O", "qcow2", "-c")
	// Not a terminal: plain lines at the interval; quiet: nothing.
	r := ferry(t, []string{"FERRY_PROGRESS_INTERVAL=1ms"}, "convert", "--workers", "1", "--digest", img, filepath.Join(dir, "a.raw"))
	if r.code != 0 || !strings.Contains(r.stderr, "convert: ") || strings.Contains(r.stderr, "\r") {
		t.Fatalf("progress lines missing or not plain: %q", r.stderr)
	}
	r = ferry(t, []string{"FERRY_PROGRESS_INTERVAL=1ms"}, "convert", "-q", img, filepath.Join(dir, "b.raw"))
	if r.code != 0 || r.stderr != "" || r.stdout != "" {
		t.Fatalf("--quiet printed: %q %q", r.stdout, r.stderr)
	}
}

// TestInterruptRemovesPartialOutput: Ctrl-C in the middle of a conversion
// (here blocked on a stdin that has sent half an image) exits 130 promptly
// and leaves nothing at DST.
func TestInterruptRemovesPartialOutput(t *testing.T) {
	dir := t.TempDir()
	dst := filepath.Join(dir, "out.raw")
	cmd := exec.Command(ferryBin, "convert", "-q", "-", dst)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Half a raw image, then silence: the conversion is under way.
	stdin.Write(bytes.Repeat([]byte("ferry raw data "), 300000))
	waitFor(t, func() bool {
		entries, _ := os.ReadDir(dir)
		return len(entries) > 0 // the hidden partial file exists
	})
	cmd.Process.Signal(os.Interrupt)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		cmd.Process.Kill()
		t.Fatal("ferry did not stop within 5 s of SIGINT")
	}
	stdin.Close()
	if code := cmd.ProcessState.ExitCode(); code != exitInterrupted {
		t.Fatalf("exit %d, want %d; stderr: %s", code, exitInterrupted, stderr.String())
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Fatalf("interrupted conversion left %v", entries)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatal("condition not reached in 10 s")
}

// A full disk, where the spool goes (--scratch) or where the output goes:
// one line naming the cause, exit 1, and nothing left on either disk.
func TestFullDisk(t *testing.T) {
	dir := t.TempDir()
	raw := filepath.Join(dir, "disk.raw")
	testutil.Run(t, "sh", "-c", "head -c 12582912 /dev/urandom > "+raw)
	img := filepath.Join(dir, "disk.qcow2")
	testutil.QemuImg(t, "convert", "-q", "-f", "raw", "-O", "qcow2", raw, img)
	testutil.Run(t, "xz", "-0", "-k", img)
	for _, c := range []struct {
		name     string
		args     func(small, out string) []string
		contains string
	}{
		{"scratch", func(small, out string) []string {
			return []string{"convert", "--scratch", small, img + ".xz", filepath.Join(out, "out.raw")}
		}, "the disk is full after"},
		{"output", func(small, out string) []string {
			return []string{"convert", img, filepath.Join(small, "out.raw")}
		}, "no space left on device"},
	} {
		t.Run(c.name, func(t *testing.T) {
			small := testutil.SmallFS(t, 4<<20)
			out := t.TempDir()
			r := ferry(t, nil, c.args(small, out)...)
			if r.code != exitFailure {
				t.Fatalf("exit %d, want %d; stderr: %s", r.code, exitFailure, r.stderr)
			}
			lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
			if len(lines) != 1 || !strings.Contains(lines[0], c.contains) {
				t.Fatalf("stderr should be one line naming the cause (%q): %q", c.contains, r.stderr)
			}
			for _, d := range []string{small, out} {
				if entries, _ := os.ReadDir(d); len(entries) != 0 {
					t.Fatalf("%s left in %s", entries[0].Name(), d)
				}
			}
			var st syscall.Statfs_t
			if err := syscall.Statfs(small, &st); err != nil || st.Bfree != st.Blocks {
				t.Fatalf("the small disk still has %d blocks in use (%v)", st.Blocks-st.Bfree, err)
			}
		})
	}
}
