package protocol

import (
	"strings"
	"testing"
	"unicode/utf8"
)

func FuzzDecode(f *testing.F) {
	for _, s := range []string{
		"", "42", Tombstone(7, tok), Lease(0, tok), Tombstone(1<<63, tok),
		(Envelope{Nonce: tok, Payload: []byte("v:a:l")}).Encode(), (Envelope{Nonce: tok, NotFound: true}).Encode(),
		"wbfence:1:", "wbfence:1:00:" + tok, "wblease:1:1:" + tok + ":", "wbval:1:1:" + tok + ":v", "wbval:1:1:" + tok + ":n:x",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c := Decode(s)
		// Whatever parses re-renders to exactly the same bytes: every stored
		// form has one spelling, so a compare-and-set on it is exact.
		switch c.Kind {
		case KindTombstone:
			if got := Tombstone(c.Fence.LSN, c.Fence.Token); got != s {
				t.Fatalf("tombstone %q re-renders as %q", s, got)
			}
		case KindLease:
			if got := Lease(c.Fence.LSN, c.Fence.Token); got != s {
				t.Fatalf("lease %q re-renders as %q", s, got)
			}
		case KindValue:
			if got := c.Envelope.Encode(); got != s {
				t.Fatalf("value %q re-renders as %q", s, got)
			}
		case KindForeign:
			for _, prefix := range []string{TombstonePrefix, LeasePrefix} {
				if strings.HasPrefix(s, prefix) {
					rest := strings.SplitN(s[len(prefix):], ":", 2)
					if len(rest) == 2 && validToken(rest[1]) {
						if _, err := parseDecimal(rest[0]); err == nil {
							t.Fatalf("%q is well formed but decoded as foreign", s)
						}
					}
				}
			}
		default:
			t.Fatalf("Decode(%q) = %v", s, c.Kind)
		}
	})
}

func FuzzUnmarshalEvent(f *testing.F) {
	for _, s := range []string{
		`{"lsn":"0/A","keys":["k"],"patterns":["p*"]}`, `{"lsn":"0/A","flush":true}`, `{}`, `null`, `{"lsn":"0/A","keys":[1]}`,
		`{"lsn":"FFFFFFFF/FFFFFFFF","keys":["\u00e9","\ud800"],"patterns":[]}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		ev, err := UnmarshalEvent(b)
		if err != nil {
			return
		}
		out, err := ev.Marshal()
		if err != nil {
			t.Fatalf("Marshal of a parsed event: %v", err)
		}
		back, err := UnmarshalEvent(out)
		if err != nil {
			t.Fatalf("re-parse of %s: %v", out, err)
		}
		// JSON decoding only yields valid UTF-8, so nothing turns into a
		// flush on the way back.
		if back.LSN != ev.LSN || back.Flush != ev.Flush || !equal(back.Keys, ev.Keys) || !equal(back.Patterns, ev.Patterns) {
			t.Fatalf("round trip changed the event: %+v -> %s -> %+v", ev, out, back)
		}
	})
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// escape is what walbust does to row values in patterns.
func escape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '*', '?', '[', ']', '\\':
			b.WriteByte('\\')
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func FuzzMatch(f *testing.F) {
	for _, s := range [][2]string{{"*", ""}, {"a[", "a"}, {"[^", "x"}, {"\\", "\\"}, {"a*b?c[d-f]", "axxbyce"}, {"[\xff-a]", "\x80"}} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, pattern, key string) {
		got := Match(pattern, key)
		if pattern == key && !strings.ContainsAny(pattern, "*?[]\\") && !got {
			t.Fatalf("a literal pattern %q does not match itself", pattern)
		}
		// An escaped value matches exactly itself, so a row value can
		// never widen a pattern.
		if !Match(escape(key), key) {
			t.Fatalf("escape(%q) = %q does not match it", key, escape(key))
		}
		if Match(escape(key), key+"x") || (key != "" && Match(escape(key), key[:len(key)-1])) {
			t.Fatalf("escape(%q) matches another string", key)
		}
		if !Match(escape(key)+"*", key+pattern) {
			t.Fatalf("escape(%q)* does not match a longer key", key)
		}
		_ = utf8.ValidString(key)
	})
}
