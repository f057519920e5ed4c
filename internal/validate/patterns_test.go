package validate

import (
	"strings"
	"testing"

	"github.com/walbust/walbust/mapping"
)

func TestPatternPaths(t *testing.T) {
	reg, err := mapping.Parse("deps.yaml", []byte(`version: 1
tables:
  public.t:
    keys: ["t:{id}"]
    derived:
      - patterns:
          - "s:{id}:*"
          - match: "f:{id}:*"
            index: true
          - match: "g:{id}:*"
            index: true
            also_scan: true
    on_truncate:
      patterns: ["s:*"]
`))
	if err != nil {
		t.Fatal(err)
	}
	got := PatternPaths(reg)
	want := []string{
		`deps.yaml:7:13: pattern "s:{id}:*" (public.t derived[0]): scan:`,
		`deps.yaml:8:20: pattern "f:{id}:*" (public.t derived[0]): index:`,
		`deps.yaml:10:20: pattern "g:{id}:*" (public.t derived[0]): index+scan:`,
		`deps.yaml:14:18: pattern "s:*" (public.t on_truncate): scan:`,
	}
	if len(got) != len(want) {
		t.Fatalf("got %d lines, want %d:\n%s", len(got), len(want), strings.Join(got, "\n"))
	}
	for i := range want {
		if !strings.HasPrefix(got[i], want[i]) {
			t.Errorf("line %d: %q, want it to start with %q", i, got[i], want[i])
		}
	}
}
