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
		`pattern "s:{id}:*" (deps.yaml:7:13, public.t derived[0]): path scan:`,
		`pattern "f:{id}:*" (deps.yaml:8:20, public.t derived[0]): path index:`,
		`pattern "g:{id}:*" (deps.yaml:10:20, public.t derived[0]): path index+scan:`,
		`pattern "s:*" (deps.yaml:14:18, public.t on_truncate): path scan:`,
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
