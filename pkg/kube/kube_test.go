package kube

import (
	"os"
	"path/filepath"
	"testing"
)

const twoContexts = `apiVersion: v1
kind: Config
clusters:
- name: a
  cluster: {server: "https://a.example.com:6443"}
- name: b
  cluster: {server: "https://b.example.com:6443"}
users:
- name: u
  user: {token: t0k3n}
contexts:
- name: ctx-a
  context: {cluster: a, user: u, namespace: team-a}
- name: ctx-b
  context: {cluster: b, user: u}
current-context: ctx-a
`

func TestConfig(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "config")
	if err := os.WriteFile(path, []byte(twoContexts), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name       string
		o          Options
		env        string
		wantServer string
		wantNS     string
		wantErr    bool
	}{
		{name: "current-context", o: Options{Kubeconfig: path}, wantServer: "https://a.example.com:6443", wantNS: "team-a"},
		{name: "context-flag", o: Options{Kubeconfig: path, Context: "ctx-b"}, wantServer: "https://b.example.com:6443", wantNS: "default"},
		{name: "namespace-flag", o: Options{Kubeconfig: path, Namespace: "other"}, wantServer: "https://a.example.com:6443", wantNS: "other"},
		{name: "KUBECONFIG", env: path, wantServer: "https://a.example.com:6443", wantNS: "team-a"},
		{name: "unknown-context", o: Options{Kubeconfig: path, Context: "nope"}, wantErr: true},
		{name: "nothing", env: filepath.Join(dir, "missing"), wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("KUBECONFIG", tt.env)
			t.Setenv("HOME", dir) // no ~/.kube/config
			t.Setenv("KUBERNETES_SERVICE_HOST", "")
			cfg, ns, err := Config(tt.o)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, want error %v", err, tt.wantErr)
			}
			if err != nil {
				return
			}
			if cfg.Host != tt.wantServer || ns != tt.wantNS || cfg.BearerToken != "t0k3n" || cfg.UserAgent != "ferry" {
				t.Errorf("host %q ns %q token %q ua %q", cfg.Host, ns, cfg.BearerToken, cfg.UserAgent)
			}
		})
	}
}
