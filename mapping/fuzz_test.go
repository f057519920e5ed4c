package mapping_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/walbust/walbust/internal/yamlnode"
	"github.com/walbust/walbust/mapping"
)

// markerRow renders a column as \x01name\x02, so the fuzz test can rebuild
// the template's source from its rendering.
type markerRow struct{}

func (markerRow) Text(column string) ([]byte, bool) { return []byte("\x01" + column + "\x02"), true }

// canonical rebuilds a template source from a markerRow rendering: literal
// braces doubled, columns back in braces.
func canonical(rendered string) string {
	var b strings.Builder
	inColumn := false
	for i := 0; i < len(rendered); i++ {
		switch c := rendered[i]; {
		case c == '\x01':
			inColumn = true
			b.WriteByte('{')
		case c == '\x02':
			inColumn = false
			b.WriteByte('}')
		case !inColumn && (c == '{' || c == '}'):
			b.WriteByte(c)
			b.WriteByte(c)
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

func FuzzParseTemplate(f *testing.F) {
	for _, s := range []string{
		"", "user:{id}", "user:{id}:profile", "{a}{b}{a}", "{{", "}}", "{{literal}}", "a{{{id}}}b",
		"{", "}", "{}", "{ }", "{ id}", "{a{b}}", "{{id}", "{id}}", "search:users:{name}:*",
		"x:{ü}", "x:{col name}", "glob:*?[ab]\\", "\x00{\xff}", "{{{{}}}}", "{a}}}{{b}",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, src string) {
		tmpl, err := mapping.ParseTemplate(src)
		if err != nil {
			if tmpl != nil {
				t.Fatalf("ParseTemplate(%q) returned a template and error %v", src, err)
			}
			if src != "" && !strings.Contains(err.Error(), fmt.Sprintf("%q", src)) {
				t.Errorf("error %q does not quote the template", err)
			}
			return
		}
		if src == "" {
			t.Fatal("empty template accepted")
		}
		if tmpl.Source != src {
			t.Fatalf("Source = %q, want %q", tmpl.Source, src)
		}
		cols := tmpl.Columns()
		seen := map[string]bool{}
		for _, c := range cols {
			if c == "" || strings.TrimSpace(c) != c || strings.ContainsAny(c, "{}") {
				t.Errorf("bad column %q from %q", c, src)
			}
			if !strings.Contains(src, "{"+c+"}") {
				t.Errorf("column %q is not in %q", c, src)
			}
			if seen[c] {
				t.Errorf("column %q listed twice", c)
			}
			seen[c] = true
		}
		out, ok := tmpl.AppendRender([]byte("prefix|"), nameRow{})
		if !ok || !strings.HasPrefix(string(out), "prefix|") {
			t.Fatalf("AppendRender(%q) = %q, %v", src, out, ok)
		}
		if _, ok := tmpl.AppendPattern(nil, nameRow{}); !ok {
			t.Fatalf("AppendPattern(%q) failed", src)
		}
		if null, ok := tmpl.AppendRender([]byte("p"), mapRow{}); ok != (len(cols) == 0) || string(null) != "p" && len(cols) > 0 {
			t.Errorf("AppendRender(%q) with NULLs = %q, %v", src, null, ok)
		}
		if !strings.ContainsAny(src, "\x01\x02") {
			marked, _ := tmpl.AppendRender(nil, markerRow{})
			if got := canonical(string(marked)); got != src {
				t.Errorf("template %q renders back as %q", src, got)
			}
		}
	})
}

func FuzzRegistryParse(f *testing.F) {
	f.Add([]byte(exampleDeps))
	f.Add([]byte(actionsDeps))
	f.Add([]byte(queryDeps))
	f.Add([]byte(usersDeps))
	for _, s := range []string{
		"",
		"version: 1\n",
		"version: 2\ntables: {}\n",
		"tables:\n  users:\n    keys: [\"a\"]\n",
		"version: 1\ntables:\n  public.a:\n    keys: [\"a:{id\"]\n    on_truncate:\n      keys: [\"a:{id}\"]\n",
		"version: 1\ntables:\n  public.a:\n    derived:\n      - query: \"SELECT 1\"\n        keys: [x]\n      - args: [id]\n",
		"version: 1\ntables:\n  public.a: [\n",
		"\tversion: 1",
		"- a\n- b\n",
		"version: 1\ntables:\n  public.a: &x\n    keys: [a]\n  public.b: *x\n",
		"version: 1\ntables:\n  public.a:\n    <<: {keys: [a]}\n",
		"version: 1\ntables:\n  ? [a, b]\n  : {keys: [a]}\n",
		"version: 1\ndefaults: {action: stale, stale_ttl: 1ns, version_key: \"{key}\"}\ntables: {public.a: {keys: [\"\"]}}\n",
		"---\nversion: 1\n---\nversion: 2\n",
		"version: !!binary AQ==\ntables: ~\n",
	} {
		f.Add([]byte(s))
	}
	const file = "fuzz/deps.yaml"
	f.Fuzz(func(t *testing.T, data []byte) {
		reg, err := mapping.Parse(file, data)
		if err == nil {
			if reg == nil || len(reg.Tables) == 0 {
				t.Fatalf("no error and no tables: %+v", reg)
			}
			for name, tbl := range reg.Tables {
				if tbl.Name != name || !strings.Contains(name, ".") || len(tbl.Rules) == 0 {
					t.Errorf("table %q: %+v", name, tbl)
				}
				for _, r := range tbl.Rules {
					if len(r.Keys)+len(r.Patterns) == 0 || r.On == 0 || r.Line <= 0 {
						t.Errorf("table %q rule %s: %+v", name, r.Name, r)
					}
				}
			}
			return
		}
		if reg != nil {
			t.Fatal("registry returned with an error")
		}
		if !strings.HasPrefix(err.Error(), file) {
			t.Fatalf("error does not start with the file name: %q", err)
		}
		var list yamlnode.Errors
		var one *yamlnode.Error
		switch {
		case errors.As(err, &list):
		case errors.As(err, &one):
			list = yamlnode.Errors{one}
		default:
			t.Fatalf("error of type %T: %v", err, err)
		}
		if len(list) == 0 {
			t.Fatal("empty error list")
		}
		for _, e := range list {
			s := e.Error()
			if e.File != file || !strings.HasPrefix(s, file) {
				t.Errorf("error %q names file %q", s, e.File)
			}
			if e.Line > 0 && (e.Column <= 0 || !strings.HasPrefix(s, fmt.Sprintf("%s:%d:%d: ", file, e.Line, e.Column))) {
				t.Errorf("error %q at %d:%d does not start with its position", s, e.Line, e.Column)
			}
			if e.Line < 0 || e.Msg == "" {
				t.Errorf("error %+v", e)
			}
		}
	})
}
