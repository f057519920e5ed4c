package mapping

import "testing"

func TestTemplateGlob(t *testing.T) {
	for _, tc := range []struct {
		src     string
		pattern bool
		want    string
	}{
		{"user:{id}", false, "user:*"},
		{"user:{id}:{org}", false, "user:*:*"},
		{"{a}{b}", false, "*"},
		{"lit*[x]?:{id}", false, `lit\*\[x\]\?:*`},
		{`back\slash:{id}`, false, `back\\slash:*`},
		{"{{braces}}:{id}", false, "{braces}:*"},
		{"search:{q}:*", true, "search:*:*"},
		{"search:[ab]?:{q}", true, "search:[ab]?:*"},
	} {
		tpl, err := ParseTemplate(tc.src)
		if err != nil {
			t.Fatal(err)
		}
		tpl.pattern = tc.pattern
		if got := tpl.Glob(); got != tc.want {
			t.Errorf("Glob(%q, pattern %v) = %q, want %q", tc.src, tc.pattern, got, tc.want)
		}
	}
}

func TestMatcher(t *testing.T) {
	reg, err := Parse("deps.yaml", []byte(`version: 1
tables:
  public.users:
    keys: ["user:{id}", "user:{id}:profile"]
    derived:
      - patterns: ["search:users:{org_id}:*"]
  public.products:
    action: bump
    keys: ["product:{id}"]
  public.orders:
    action: stale
    keys: ["order*:{id}"]
    on_truncate:
      keys: ["orders:all"]
`))
	if err != nil {
		t.Fatal(err)
	}
	m := NewMatcher(reg)
	for _, tc := range []struct {
		key       string
		ok        bool
		source    string
		companion string
	}{
		{"user:1", true, "user:{id}", ""},
		{"user:1:profile", true, "user:{id}", ""}, // user:* matches first
		{"search:users:7:page=2", true, "search:users:{org_id}:*", ""},
		{"product:9", true, "product:{id}", ""},
		{"product:9:version", true, "product:{id}", "version"},
		{"order*:5", true, "order*:{id}", ""},
		{"orderX:5", false, "", ""}, // the template's * is literal
		{"orders:all", true, "orders:all", ""},
		{"session:abc", false, "", ""},
		{"users:1", false, "", ""},
	} {
		g, ok := m.Match(tc.key)
		if ok != tc.ok || g.Source != tc.source || g.Companion != tc.companion {
			t.Errorf("Match(%q) = %+v, %v; want source %q companion %q, %v", tc.key, g, ok, tc.source, tc.companion, tc.ok)
		}
	}
}
