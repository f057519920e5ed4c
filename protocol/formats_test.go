package protocol

import (
	"math"
	"strings"
	"testing"
	"time"

	"github.com/walbust/walbust/replication/wal"
)

const tok = "0123456789abcdef0123456789abcdef"

func TestTombstoneAndLeaseFormats(t *testing.T) {
	for _, tt := range []struct {
		lsn       wal.LSN
		tombstone string
		lease     string
	}{
		{0, "wbfence:1:0:" + tok, "wblease:1:0:" + tok},
		{1, "wbfence:1:1:" + tok, "wblease:1:1:" + tok},
		{0x16B374D848, "wbfence:1:97500059720:" + tok, "wblease:1:97500059720:" + tok},
		{math.MaxUint64, "wbfence:1:18446744073709551615:" + tok, "wblease:1:18446744073709551615:" + tok},
	} {
		if got := Tombstone(tt.lsn, tok); got != tt.tombstone {
			t.Errorf("Tombstone(%d) = %q, want %q", tt.lsn, got, tt.tombstone)
		}
		if got := Lease(tt.lsn, tok); got != tt.lease {
			t.Errorf("Lease(%d) = %q, want %q", tt.lsn, got, tt.lease)
		}
		f, err := ParseTombstone(tt.tombstone)
		if err != nil || f != (Fence{LSN: tt.lsn, Token: tok}) {
			t.Errorf("ParseTombstone(%q) = %+v, %v", tt.tombstone, f, err)
		}
		f, err = ParseLease(tt.lease)
		if err != nil || f != (Fence{LSN: tt.lsn, Token: tok}) {
			t.Errorf("ParseLease(%q) = %+v, %v", tt.lease, f, err)
		}
		if _, err := ParseTombstone(tt.lease); err == nil {
			t.Errorf("ParseTombstone accepted lease %q", tt.lease)
		}
		if _, err := ParseLease(tt.tombstone); err == nil {
			t.Errorf("ParseLease accepted tombstone %q", tt.tombstone)
		}
	}
}

func TestParseTombstoneRejects(t *testing.T) {
	for _, s := range []string{
		"",
		"wbfence:1:",
		"wbfence:1:5",
		"wbfence:1:5:",
		"wbfence:1::" + tok,
		"wbfence:1:05:" + tok,                   // leading zero: two spellings of one LSN
		"wbfence:1:-5:" + tok,                   // sign
		"wbfence:1:+5:" + tok,                   // sign
		"wbfence:1:18446744073709551616:" + tok, // 2^64
		"wbfence:1:5:" + strings.ToUpper(tok),
		"wbfence:1:5:0123456789abcde",            // 15 digits
		"wbfence:1:5:" + strings.Repeat("a", 65), // 65 digits
		"wbfence:1:5:" + tok + ":x",
		"wbfence:2:5:" + tok,
		"WBFENCE:1:5:" + tok,
		" wbfence:1:5:" + tok,
		"wbfence:1:5:" + tok + "\n",
	} {
		if f, err := ParseTombstone(s); err == nil {
			t.Errorf("ParseTombstone(%q) = %+v, want an error", s, f)
		}
		if c := Decode(s); c.Kind != KindForeign {
			t.Errorf("Decode(%q) = %v, want foreign", s, c.Kind)
		}
	}
}

func TestNewToken(t *testing.T) {
	seen := map[string]bool{}
	for range 100 {
		s := NewToken()
		if len(s) != 32 || !validToken(s) {
			t.Fatalf("NewToken() = %q: want 32 lower-case hex digits", s)
		}
		if seen[s] {
			t.Fatalf("NewToken repeated %q", s)
		}
		seen[s] = true
	}
}

func TestEnvelope(t *testing.T) {
	soft := time.UnixMilli(1700000000123)
	for _, tt := range []struct {
		env  Envelope
		want string
	}{
		{Envelope{SoftExpiry: soft, Nonce: tok, Payload: []byte("hello")}, "wbval:1:1700000000123:" + tok + ":v:hello"},
		{Envelope{SoftExpiry: soft, Nonce: tok, Payload: []byte("a:b:c\x00\xff")}, "wbval:1:1700000000123:" + tok + ":v:a:b:c\x00\xff"},
		{Envelope{SoftExpiry: soft, Nonce: tok, Payload: []byte{}}, "wbval:1:1700000000123:" + tok + ":v:"},
		{Envelope{SoftExpiry: soft, Nonce: tok, NotFound: true}, "wbval:1:1700000000123:" + tok + ":n:"},
		{Envelope{SoftExpiry: time.UnixMilli(0), Nonce: tok, Payload: []byte("x")}, "wbval:1:0:" + tok + ":v:x"},
	} {
		got := tt.env.Encode()
		if got != tt.want {
			t.Errorf("Encode = %q, want %q", got, tt.want)
			continue
		}
		back, err := ParseEnvelope(got)
		if err != nil {
			t.Errorf("ParseEnvelope(%q): %v", got, err)
			continue
		}
		if !back.SoftExpiry.Equal(tt.env.SoftExpiry) || back.Nonce != tt.env.Nonce || back.NotFound != tt.env.NotFound || string(back.Payload) != string(tt.env.Payload) {
			t.Errorf("ParseEnvelope(%q) = %+v, want %+v", got, back, tt.env)
		}
		if c := Decode(got); c.Kind != KindValue {
			t.Errorf("Decode(%q) = %v, want value", got, c.Kind)
		}
	}
	for _, s := range []string{
		"wbval:1:",
		"wbval:1:1:" + tok + ":v",    // no payload separator
		"wbval:1:01:" + tok + ":v:x", // leading zero
		"wbval:1:x:" + tok + ":v:x",  // not a number
		"wbval:1:1:abc:v:x",          // short nonce
		"wbval:1:1:" + tok + ":q:x",  // unknown kind
		"wbval:1:1:" + tok + ":n:x",  // not-found with a payload
		"wbval:1:1:" + tok + "::x",   // empty kind
		"wbval:2:1:" + tok + ":v:x",  // other version
		"wbval:1:99999999999999999999:" + tok + ":v:x",
	} {
		if e, err := ParseEnvelope(s); err == nil {
			t.Errorf("ParseEnvelope(%q) = %+v, want an error", s, e)
		}
	}
	e := Envelope{SoftExpiry: soft}
	if e.Stale(soft.Add(-time.Millisecond)) || !e.Stale(soft) {
		t.Error("Stale: want false before the soft expiry and true from it on")
	}
}

func TestDecode(t *testing.T) {
	for _, tt := range []struct {
		s    string
		kind Kind
		lsn  wal.LSN
	}{
		{"wbfence:1:42:" + tok, KindTombstone, 42},
		{"wblease:1:42:" + tok, KindLease, 42},
		{"wblease:1:0:" + tok, KindLease, 0},
		{"wbval:1:5:" + tok + ":v:42", KindValue, 0},
		{"42", KindForeign, 0},
		{"", KindForeign, 0},
		{"wbfence:1:42", KindForeign, 0},
		{"wbval:1:junk", KindForeign, 0},
	} {
		c := Decode(tt.s)
		if c.Kind != tt.kind || c.Fence.LSN != tt.lsn {
			t.Errorf("Decode(%q) = %v lsn %d, want %v lsn %d", tt.s, c.Kind, c.Fence.LSN, tt.kind, tt.lsn)
		}
	}
}

func TestMatchTable(t *testing.T) {
	for _, tt := range []struct {
		pattern, key string
		want         bool
	}{
		{"*", "", true},
		{"*", "anything", true},
		{"", "", true},
		{"**", "", false}, // stringmatchlen needs a byte to start on
		{"a*", "a", true},
		{"", "a", false},
		{"a", "", false},
		{"user:*", "user:1", true},
		{"user:*", "users:1", false},
		{"search:users:\\*:*", "search:users:*:p1", true},
		{"search:users:\\*:*", "search:users:bob:p1", false},
		{"h?llo", "hello", true},
		{"h?llo", "hllo", false},
		{"h[ae]llo", "hallo", true},
		{"h[ae]llo", "hillo", false},
		{"h[^e]llo", "hallo", true},
		{"h[^e]llo", "hello", false},
		{"h[a-b]llo", "hbllo", true},
		{"h[b-a]llo", "hbllo", true}, // reversed ranges are swapped
		{"h[a-b]llo", "hcllo", false},
		{"a\\[b", "a[b", true},
		{"a[\\]]b", "a]b", true},
		{"a[", "ab", false},
		{"a[^", "ab", true}, // Redis quirk: an unterminated negated class matches one byte
		{"a\\", "a\\", true},
		{"**a**", "xxa", true},
		{"a*b*c", "abxxc", true},
		{"a*b*c", "acb", false},
		{"*:products", "category:7:products", true},
		{"category:*:products", "category:7:products:extra", false},
	} {
		if got := Match(tt.pattern, tt.key); got != tt.want {
			t.Errorf("Match(%q, %q) = %v, want %v", tt.pattern, tt.key, got, tt.want)
		}
	}
}

func TestMatchHighBytesIsSuperset(t *testing.T) {
	// Redis compares range bounds as C chars: signed on x86, unsigned on
	// arm64. Match accepts what either would.
	p := "[a-\xff]"
	for _, k := range []string{"b", "\xfe", "\xff"} { // unsigned: a..0xff
		if !Match(p, k) {
			t.Errorf("Match(%q, %q) = false; unsigned chars match", p, k)
		}
	}
	for _, k := range []string{"\x00", "A"} { // signed: -1..'a'
		if !Match(p, k) {
			t.Errorf("Match(%q, %q) = false; signed chars match", p, k)
		}
	}
}
