package protocol

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Envelope is a cached value as readers store it:
//
//	wbval:1:<soft-expiry-ms>:<nonce>:<kind>:<payload>
//
// soft-expiry-ms is Unix time in milliseconds (decimal) after which the
// value is stale: still served, but due for revalidation; Redis's own TTL
// (soft expiry plus the stale-while-revalidate window) removes it. nonce
// is a token, so two fills of the same bytes are different strings and a
// compare-and-set on an observed value can never be fooled by an
// identical later one. kind is "v" for a value and "n" for a cached "not
// found" (payload empty). The payload is the raw bytes: everything after
// the fifth ':'.
type Envelope struct {
	SoftExpiry time.Time // millisecond precision
	Nonce      string
	NotFound   bool
	Payload    []byte
}

// Encode renders the envelope.
func (e Envelope) Encode() string {
	kind := "v"
	if e.NotFound {
		kind = "n"
	}
	var b strings.Builder
	b.Grow(len(ValuePrefix) + 20 + len(e.Nonce) + 4 + len(e.Payload))
	b.WriteString(ValuePrefix)
	b.WriteString(strconv.FormatInt(e.SoftExpiry.UnixMilli(), 10))
	b.WriteByte(':')
	b.WriteString(e.Nonce)
	b.WriteByte(':')
	b.WriteString(kind)
	b.WriteByte(':')
	b.Write(e.Payload)
	return b.String()
}

// Stale reports whether the soft expiry has passed at now.
func (e Envelope) Stale(now time.Time) bool { return !now.Before(e.SoftExpiry) }

// ParseEnvelope parses a stored value. The payload shares no memory with s.
func ParseEnvelope(s string) (Envelope, error) {
	rest, ok := strings.CutPrefix(s, ValuePrefix)
	if !ok {
		return Envelope{}, fmt.Errorf("value %.40q: %w (want %s...)", s, errNoPrefix, ValuePrefix)
	}
	fields := strings.SplitN(rest, ":", 4)
	if len(fields) != 4 {
		return Envelope{}, fmt.Errorf("value %.40q: want %s<soft-expiry-ms>:<nonce>:<kind>:<payload>", s, ValuePrefix)
	}
	ms, err := parseDecimal(fields[0])
	if err != nil || ms > 1<<62 {
		return Envelope{}, fmt.Errorf("value %.40q: soft expiry must be Unix milliseconds in decimal", s)
	}
	if !validToken(fields[1]) {
		return Envelope{}, fmt.Errorf("value %.40q: nonce must be %d-%d lower-case hex digits", s, MinTokenLen, MaxTokenLen)
	}
	e := Envelope{SoftExpiry: time.UnixMilli(int64(ms)), Nonce: fields[1]}
	switch fields[2] {
	case "v":
		e.Payload = []byte(fields[3])
	case "n":
		if fields[3] != "" {
			return Envelope{}, fmt.Errorf("value %.40q: a not-found entry has no payload", s)
		}
		e.NotFound = true
	default:
		return Envelope{}, fmt.Errorf("value %.40q: kind must be v or n", s)
	}
	return e, nil
}

// Kind is what a key's content is, by the protocol.
type Kind uint8

// Kinds of key content.
const (
	KindAbsent    Kind = iota // no such key
	KindForeign               // a string that is not part of the protocol, or a malformed one
	KindTombstone             // walbust fenced the key
	KindLease                 // a reader is filling the key
	KindValue                 // a filled value or not-found entry
)

func (k Kind) String() string {
	switch k {
	case KindAbsent:
		return "absent"
	case KindTombstone:
		return "tombstone"
	case KindLease:
		return "lease"
	case KindValue:
		return "value"
	}
	return "foreign"
}

// Content is a key's content, decoded.
type Content struct {
	Kind     Kind
	Fence    Fence    // KindTombstone, KindLease
	Envelope Envelope // KindValue
}

// Decode classifies the string stored in a key. It never fails: anything
// that is not a well-formed tombstone, lease or value is KindForeign, which
// readers treat like an absent key.
func Decode(s string) Content {
	switch {
	case strings.HasPrefix(s, TombstonePrefix):
		if f, err := ParseTombstone(s); err == nil {
			return Content{Kind: KindTombstone, Fence: f}
		}
	case strings.HasPrefix(s, LeasePrefix):
		if f, err := ParseLease(s); err == nil {
			return Content{Kind: KindLease, Fence: f}
		}
	case strings.HasPrefix(s, ValuePrefix):
		if e, err := ParseEnvelope(s); err == nil {
			return Content{Kind: KindValue, Envelope: e}
		}
	}
	return Content{Kind: KindForeign}
}
