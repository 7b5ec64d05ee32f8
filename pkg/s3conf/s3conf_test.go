package s3conf

import "testing"

func TestHost(t *testing.T) {
	for _, c := range []struct {
		in     string
		host   string
		secure bool
		bad    bool
	}{
		{"", DefaultEndpoint, true, false},
		{"minio.local:9000", "minio.local:9000", true, false},
		{"http://127.0.0.1:9000", "127.0.0.1:9000", false, false},
		{"https://s3.example.ch/", "s3.example.ch", true, false},
		{"ftp://x", "", false, true},
		{"https://x/bucket", "", false, true},
	} {
		h, s, err := Config{Endpoint: c.in}.Host()
		if (err != nil) != c.bad || h != c.host || s != c.secure {
			t.Errorf("Host(%q) = %q %v %v", c.in, h, s, err)
		}
	}
}

func TestWithEnv(t *testing.T) {
	t.Setenv("AWS_ENDPOINT_URL", "http://env:9000")
	t.Setenv("AWS_REGION", "ch-gva-2")
	t.Setenv("AWS_ACCESS_KEY_ID", "envkey")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "envsecret")
	c := Config{}.WithEnv()
	if c.Endpoint != "http://env:9000" || c.Region != "ch-gva-2" || c.AccessKey != "envkey" || c.SecretKey != "envsecret" {
		t.Fatalf("%+v", c)
	}
	// A key from flags is never paired with the environment's secret.
	c = Config{AccessKey: "flagkey"}.WithEnv()
	if c.SecretKey != "" {
		t.Fatalf("secret taken from env for a flag key: %+v", c)
	}
}
