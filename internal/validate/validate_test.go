package validate

import (
	"errors"
	"strings"
	"testing"

	"github.com/walbust/walbust/mapping"
)

// A query walbust's role may not run: the problem says what it costs,
// which depends on the rule. A lookup stalls the stream; a refresh query
// flags its keys stale and the stream goes on.
func TestPrivilegeProblem(t *testing.T) {
	reg, err := mapping.Parse("deps.yaml", []byte(`version: 1
tables:
  public.products:
    derived:
      - query: "SELECT c.id FROM categories c WHERE c.id = $1"
        args: [category_id]
        keys: ["category-page:{id}"]
      - keys: ["category:{category_id}:products"]
        action: refresh
        ttl: 10m
        query: "SELECT json_agg(id) AS value FROM products WHERE category_id = $1"
        args: [category_id]
`))
	if err != nil {
		t.Fatal(err)
	}
	rules := reg.Tables["public.products"].Rules
	denied := errors.New("ERROR: permission denied for table categories (SQLSTATE 42501)")
	for _, tc := range []struct {
		rule      *mapping.Rule
		want, not []string
	}{{
		rule: rules[0],
		want: []string{"public.products derived[0]: ", "lookup query", "every change of every table would stall behind it", "permission denied", "GRANT SELECT ON"},
		not:  []string{"stale", "refresh"},
	}, {
		rule: rules[1],
		want: []string{"public.products derived[1]: ", "refresh query", "flagged stale in {key}:lsn", "until its ttl (10m0s)", "the stream does not stall", "permission denied", "GRANT SELECT ON"},
		not:  []string{"stall behind"},
	}} {
		msg := privilegeProblem("public.products", tc.rule, denied)
		for _, w := range tc.want {
			if !strings.Contains(msg, w) {
				t.Errorf("%s: %q lacks %q", tc.rule.Name, msg, w)
			}
		}
		for _, n := range tc.not {
			if strings.Contains(msg, n) {
				t.Errorf("%s: %q says %q", tc.rule.Name, msg, n)
			}
		}
	}
}
