package protocol

import "testing"

func TestIndexFamily(t *testing.T) {
	for _, tt := range []struct {
		pattern, family string
		ok              bool
	}{
		{"search:42:*", "search:42:", true},
		{`search:a\*\?\[b\]\\:*`, `search:a*?[b]\:`, true},
		{"*", "", true},
		{"search:*:x", "", false},
		{"search:4?:*", "", false},
		{"search:[ab]:*", "", false},
		{`search:\*`, "", false},
		{"search:42", "", false},
	} {
		family, ok := IndexFamily(tt.pattern)
		if family != tt.family || ok != tt.ok {
			t.Errorf("IndexFamily(%q) = %q, %t; want %q, %t", tt.pattern, family, ok, tt.family, tt.ok)
		}
		if ok && !Match(tt.pattern, family+"anything") {
			t.Errorf("%q does not match its family %q plus a suffix", tt.pattern, family)
		}
	}
	if IndexKey("a") == DrainingKey("a") {
		t.Error("index and draining keys coincide")
	}
}
