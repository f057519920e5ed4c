package protocol

import (
	"crypto/rand"
	"encoding/hex"
)

// Token lengths accepted in tombstones, leases and envelopes.
const (
	MinTokenLen = 16
	MaxTokenLen = 64
)

// NewToken returns 32 random lower-case hex digits (128 bits). A token makes
// every tombstone, lease and value unique, so comparing a key's content with
// what a reader observed tells whether anything happened in between.
func NewToken() string {
	var b [16]byte
	// crypto/rand.Read never fails on supported platforms (it aborts the
	// program rather than return weak randomness).
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// validToken reports whether s is 16-64 lower-case hex digits.
func validToken(s string) bool {
	if len(s) < MinTokenLen || len(s) > MaxTokenLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}
