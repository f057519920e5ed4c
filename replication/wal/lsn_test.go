package wal

import (
	"math"
	"strings"
	"testing"
)

func TestLSN(t *testing.T) {
	for _, tt := range []struct {
		text string
		lsn  LSN
	}{
		{"0/0", 0},
		{"0/1", 1},
		{"16/B374D848", 0x16B374D848},
		{"FFFFFFFF/FFFFFFFF", math.MaxUint64},
	} {
		if got := tt.lsn.String(); got != tt.text {
			t.Errorf("String(%#x) = %q, want %q", tt.lsn, got, tt.text)
		}
		if got, err := ParseLSN(tt.text); err != nil || got != tt.lsn {
			t.Errorf("ParseLSN(%q) = %#x, %v", tt.text, got, err)
		}
	}
	if got, err := ParseLSN("16/b374d848"); err != nil || got != 0x16B374D848 {
		t.Errorf("ParseLSN(lower case) = %#x, %v", got, err)
	}
	if got, err := ParseLSN("00000016/0000000A"); err != nil || got != 0x160000000A {
		t.Errorf("ParseLSN(zero padded) = %#x, %v", got, err)
	}
	for _, s := range []string{"", "/", "0/", "/0", "0", "0/0/0", "123456789/0", "0/123456789", "G/0", "0/-1", "+1/1", " 0/0", "0x1/1"} {
		if v, err := ParseLSN(s); err == nil {
			t.Errorf("ParseLSN(%q) = %#x, want an error", s, v)
		}
	}
}

func FuzzParseLSN(f *testing.F) {
	for _, s := range []string{"0/0", "16/B374D848", "FFFFFFFF/FFFFFFFF", "0/", "1/2/3", "123456789/0", "a/b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		v, err := ParseLSN(s)
		if err != nil {
			return
		}
		back, err := ParseLSN(v.String())
		if err != nil || back != v {
			t.Fatalf("ParseLSN(%q) = %#x, but String gives %q which parses as %#x, %v", s, v, v.String(), back, err)
		}
		if !strings.EqualFold(strings.TrimLeft(s[:strings.IndexByte(s, '/')], "0"), strings.TrimLeft(v.String()[:strings.IndexByte(v.String(), '/')], "0")) {
			t.Fatalf("ParseLSN(%q) = %s: high part differs", s, v.String())
		}
	})
}
