package cdi

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"time"
)

// Upload tokens are JWTs like CDI's (issuer "cdi-apiserver", 5 minute
// lifetime, payload naming the PVC). CDI signs them with RS256 and gives
// the proxy the public key; both halves live in this process, so HS256
// with a random key checks the same thing: only tokens this peer's
// aggregated API issued are accepted.
type tokenPayload struct {
	Operation string `json:"operation"`
	Name      string `json:"name"`
	Namespace string `json:"namespace"`
	Resource  struct {
		Group    string `json:"group"`
		Version  string `json:"version"`
		Resource string `json:"resource"`
	} `json:"resource"`
}

type claims struct {
	Issuer    string       `json:"iss"`
	IssuedAt  int64        `json:"iat"`
	NotBefore int64        `json:"nbf"`
	Expiry    int64        `json:"exp"`
	ID        string       `json:"jti"`
	Payload   tokenPayload `json:"cdi"`
}

const tokenIssuer = "cdi-apiserver"

type tokens struct {
	key []byte
	ttl time.Duration

	mu sync.Mutex
	// revokedBefore: tokens issued before it count as expired (tests
	// force expiry without waiting 5 minutes).
	revokedBefore time.Time
	issued        int
}

func newTokens(ttl time.Duration) *tokens {
	k := make([]byte, 32)
	rand.Read(k)
	return &tokens{key: k, ttl: ttl}
}

var b64 = base64.RawURLEncoding

func (t *tokens) generate(ns, pvc string) (string, error) {
	now := time.Now()
	var id [8]byte
	rand.Read(id[:])
	c := claims{Issuer: tokenIssuer, IssuedAt: now.UnixNano(), NotBefore: now.Add(-time.Second).Unix(), Expiry: now.Add(t.ttl).Unix(), ID: b64.EncodeToString(id[:])}
	c.Payload.Operation = "Upload"
	c.Payload.Name, c.Payload.Namespace = pvc, ns
	c.Payload.Resource.Version, c.Payload.Resource.Resource = "v1", "persistentvolumeclaims"
	body, err := json.Marshal(c)
	if err != nil {
		return "", err
	}
	head := b64.EncodeToString([]byte(`{"alg":"HS256","typ":"JWT"}`))
	signing := head + "." + b64.EncodeToString(body)
	t.mu.Lock()
	t.issued++
	t.mu.Unlock()
	return signing + "." + b64.EncodeToString(t.sign(signing)), nil
}

func (t *tokens) sign(s string) []byte {
	m := hmac.New(sha256.New, t.key)
	m.Write([]byte(s))
	return m.Sum(nil)
}

var errBadToken = errors.New("invalid token")

// validate returns the payload of a valid, unexpired token.
func (t *tokens) validate(tok string) (*tokenPayload, error) {
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		return nil, errBadToken
	}
	sig, err := b64.DecodeString(parts[2])
	if err != nil || !hmac.Equal(sig, t.sign(parts[0]+"."+parts[1])) {
		return nil, errBadToken
	}
	body, err := b64.DecodeString(parts[1])
	if err != nil {
		return nil, errBadToken
	}
	var c claims
	if err := json.Unmarshal(body, &c); err != nil || c.Issuer != tokenIssuer {
		return nil, errBadToken
	}
	now := time.Now()
	t.mu.Lock()
	revoked := !t.revokedBefore.IsZero() && time.Unix(0, c.IssuedAt).Before(t.revokedBefore)
	t.mu.Unlock()
	// CDI's validator allows 10 s of clock leeway; a revoked token is
	// expired for good.
	if revoked || now.After(time.Unix(c.Expiry, 0).Add(10*time.Second)) || now.Before(time.Unix(c.NotBefore, 0).Add(-10*time.Second)) {
		return nil, errors.New("token expired")
	}
	return &c.Payload, nil
}

// expireAll makes every token issued so far expired.
func (t *tokens) expireAll() {
	t.mu.Lock()
	t.revokedBefore = time.Now()
	t.mu.Unlock()
}

func (t *tokens) count() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.issued
}
