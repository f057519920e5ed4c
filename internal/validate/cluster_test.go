package validate

import (
	"strings"
	"testing"

	"github.com/walbust/walbust/mapping"
)

func TestCluster(t *testing.T) {
	reg, err := mapping.Parse("deps.yaml", []byte(`version: 1
tables:
  public.settings:
    action: stale
    keys:
      - "master-data"
      - "{{setting:{id}}}"
    derived:
      - patterns: ["{{setting:*}}", "setting-list:*"]
    on_truncate:
      keys: ["settings-all"]
  public.users:
    keys: ["user:{id}"]
  public.products:
    action: bump
    keys: ["product:{id}"]
`))
	if err != nil {
		t.Fatal(err)
	}
	ps := Cluster(reg)
	want := []string{
		`deps.yaml:6:9: public.settings keys: in cluster mode the stale action on "master-data" cannot be atomic`,
		`deps.yaml:9:37: public.settings derived[0]: in cluster mode the stale action on "setting-list:*" cannot be atomic: the keys it matches have no hash tag`,
		`deps.yaml:11:14: public.settings on_truncate: in cluster mode the stale action on "settings-all"`,
	}
	if len(ps) != len(want) {
		t.Fatalf("%d warnings, want %d:\n%v", len(ps), len(want), ps)
	}
	for i, w := range want {
		if !strings.HasPrefix(ps[i].Error(), w) {
			t.Errorf("warning %d:\n%s\nwant it to start with\n%s", i, ps[i].Error(), w)
		}
	}
	if !strings.Contains(ps[0].Error(), `e.g. "{{master-data}}"`) || !strings.Contains(ps[0].Error(), "{key}:stale") {
		t.Errorf("warning does not say how to fix it or name the stale copy: %s", ps[0].Error())
	}
}

// A refresh rule's key and its LSN key share a slot only with a hash tag;
// without one walbust removes the key instead of refreshing it.
func TestClusterRefresh(t *testing.T) {
	reg, err := mapping.Parse("deps.yaml", []byte(`version: 1
tables:
  public.products:
    keys: ["product-page:{id}"]
    derived:
      - keys: ["product:{id}", "{{product:{id}}}:json"]
        action: refresh
        value: row
        ttl: 1h
      - keys: ["category:{{{category_id}}}:products"]
        action: refresh
        ttl: 10m
        query: "SELECT json_agg(id) AS value FROM products WHERE category_id = $1"
        args: [category_id]
      - keys: ["category:{category_id}:count"]
        action: refresh
        ttl: 10m
        query: "SELECT count(*) AS value FROM products WHERE category_id = $1"
        args: [category_id]
      - keys: ["category-list:{category_id}"]
`))
	if err != nil {
		t.Fatal(err)
	}
	ps := Cluster(reg)
	want := []string{
		`deps.yaml:6:16: public.products derived[0]: in cluster mode "product:{id}" cannot be refreshed: it has no hash tag`,
		`deps.yaml:15:16: public.products derived[2]: in cluster mode "category:{category_id}:count" cannot be refreshed: it has no hash tag`,
	}
	if len(ps) != len(want) {
		t.Fatalf("%d warnings, want %d:\n%v", len(ps), len(want), ps)
	}
	for i, w := range want {
		if !strings.HasPrefix(ps[i].Error(), w) {
			t.Errorf("warning %d:\n%s\nwant it to start with\n%s", i, ps[i].Error(), w)
		}
	}
	if msg := ps[0].Error(); !strings.Contains(msg, `e.g. "{{product:{id}}}"`) || !strings.Contains(msg, "{key}:lsn") || !strings.Contains(msg, "removes the key instead") {
		t.Errorf("warning does not name the LSN key, the consequence or the fix: %s", msg)
	}
}
