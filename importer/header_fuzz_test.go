package importer

import (
	"fmt"
	"testing"
	"time"
)

// Content-Range comes from the server: whatever it sends, a range that
// parses is well-formed and reads back the same.
func FuzzContentRange(f *testing.F) {
	for _, s := range []string{"bytes 0-499/1234", "bytes 500-999/*", "bytes */1234", "bytes 0-0/1", "bytes 5-4/10", "bytes 0-10/10", "bytes -1-5/10", "bits 0-1/2", "bytes 9223372036854775806-9223372036854775807/*"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		first, last, total, err := parseContentRange(s)
		if err != nil {
			return
		}
		if total < -1 {
			t.Fatalf("%q: total %d", s, total)
		}
		if first == -1 && last == -1 {
			return // "bytes */TOTAL"
		}
		if first < 0 || last < first || (total >= 0 && last >= total) {
			t.Fatalf("%q: accepted range %d-%d/%d", s, first, last, total)
		}
		tot := "*"
		if total >= 0 {
			tot = fmt.Sprint(total)
		}
		f2, l2, t2, err := parseContentRange(fmt.Sprintf("bytes %d-%d/%s", first, last, tot))
		if err != nil || f2 != first || l2 != last || t2 != total {
			t.Fatalf("%q: round trip %d-%d/%d: %v", s, f2, l2, t2, err)
		}
	})
}

// Retry-After comes from the server: a delay that parses is never
// negative, however large the number (backoff caps it afterwards).
func FuzzRetryAfter(f *testing.F) {
	for _, s := range []string{"0", "1", "120", "-1", "Wed, 21 Oct 2015 07:28:00 GMT", "99999999999999999", "9223372036"} {
		f.Add(s)
	}
	now := time.Date(2026, 12, 6, 0, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, s string) {
		if d, ok := parseRetryAfter(s, now); ok && d < 0 {
			t.Fatalf("Retry-After %q: delay %v", s, d)
		}
	})
}
