package audit

import (
	"testing"

	"github.com/walbust/walbust/mapping"
	"github.com/walbust/walbust/protocol"
)

func TestShape(t *testing.T) {
	for _, tc := range []struct{ key, want string }{
		{"user:42", "user:{n}"},
		{"user:42:posts:7", "user:{n}:posts:{n}"},
		{"session:3f2b8c1e-9a4d-4e5f-8a7b-1c2d3e4f5a6b", "session:{uuid}"},
		{"blob:9f86d081884c7d65", "blob:{hex}"},
		{"tag:deadbeefcafe", "tag:deadbeefcafe"}, // letters only: a word
		{"order:12345678901", "order:{n}"},       // digits only: a number
		{"api:v2:feed", "api:v{n}:feed"},
		{"plain", "plain"},
		{"", ""},
	} {
		if got := Shape(tc.key); got != tc.want {
			t.Errorf("Shape(%q) = %q, want %q", tc.key, got, tc.want)
		}
	}
}

func TestClassify(t *testing.T) {
	reg, err := mapping.Parse("deps.yaml", []byte(`version: 1
tables:
  public.users:
    keys: ["user:{id}"]
    derived:
      - patterns: ["search:{org}:*"]
  public.products:
    action: bump
    keys: ["product:{id}"]
`))
	if err != nil {
		t.Fatal(err)
	}
	m := mapping.NewMatcher(reg)
	for _, tc := range []struct {
		key, value   string
		own, covered string
	}{
		{"user:1", "", "", "user:{id}"},
		{"search:3:q=x", "", "", "search:{org}:*"},
		{"product:1:version", "12", OwnVersion, ""},
		{"walbust:applied:{walbust}", "0/1", OwnPosition, ""},
		{"walbust:settled:{walbust}", "0/1", OwnPosition, ""},
		{"user:2", protocol.TombstonePrefix + "5:tok", OwnTombstone, ""},
		{"cart:9", protocol.LeasePrefix + "0:tok", OwnLease, ""},
		{"cart:9", "{\"items\":[]}", "", ""},
		{"session:abc", "", "", ""},
	} {
		got := classify(m, tc.key, tc.value)
		if got.own != tc.own || got.covered != tc.covered {
			t.Errorf("classify(%q, %q) = %+v, want own %q covered %q", tc.key, tc.value, got, tc.own, tc.covered)
		}
	}
}
