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
