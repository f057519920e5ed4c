package mapping_test

import (
	"reflect"
	"strings"
	"testing"

	"github.com/walbust/walbust/mapping"
)

// mapRow is a Row backed by a map; a nil value (or an absent column) is NULL.
type mapRow map[string][]byte

func (r mapRow) Text(column string) ([]byte, bool) {
	v, ok := r[column]
	return v, ok && v != nil
}

// nameRow renders every column as its own name.
type nameRow struct{}

func (nameRow) Text(column string) ([]byte, bool) { return []byte(column), true }

func TestParseTemplateValid(t *testing.T) {
	row := mapRow{"id": []byte("7"), "a": []byte("A"), "b": []byte("B"), "ü": []byte("U"), "col name": []byte("C")}
	tests := []struct {
		src     string
		columns []string
		render  string
	}{
		{"leaderboard:global", nil, "leaderboard:global"},
		{"user:{id}", []string{"id"}, "user:7"},
		{"{id}", []string{"id"}, "7"},
		{"user:{id}:profile", []string{"id"}, "user:7:profile"},
		{"{a}{b}{a}", []string{"a", "b"}, "ABA"},
		{"{{", nil, "{"},
		{"}}", nil, "}"},
		{"{{literal}}", nil, "{literal}"},
		{"a{{{id}}}b", []string{"id"}, "a{7}b"},
		{"{{{{", nil, "{{"},
		{"json:{{\"id\":{id}}}", []string{"id"}, `json:{"id":7}`},
		{"x:{ü}", []string{"ü"}, "x:U"},
		{"x:{col name}", []string{"col name"}, "x:C"},
		{"glob:*?[ab]\\", nil, "glob:*?[ab]\\"},
		{" spaced key ", nil, " spaced key "},
	}
	for _, tt := range tests {
		t.Run(tt.src, func(t *testing.T) {
			tmpl, err := mapping.ParseTemplate(tt.src)
			if err != nil {
				t.Fatalf("ParseTemplate(%q): %v", tt.src, err)
			}
			if tmpl.Source != tt.src || tmpl.String() != tt.src {
				t.Errorf("Source = %q, String() = %q, want %q", tmpl.Source, tmpl.String(), tt.src)
			}
			if got := tmpl.Columns(); !reflect.DeepEqual(got, tt.columns) {
				t.Errorf("Columns() = %q, want %q", got, tt.columns)
			}
			got, ok := tmpl.AppendRender(nil, row)
			if !ok || string(got) != tt.render {
				t.Errorf("AppendRender = %q, %v; want %q, true", got, ok, tt.render)
			}
		})
	}
}

func TestParseTemplateErrors(t *testing.T) {
	tests := []struct {
		src  string
		want string // substring of the error
	}{
		{"", "empty template"},
		{" ", "only whitespace"},
		{"\t \n", "only whitespace"},
		{"{", "unclosed '{' at offset 0"},
		{"user:{id", "unclosed '{' at offset 5"},
		{"user:{id:{name}", "unclosed '{' at offset 5"},
		{"{a{b}}", "unclosed '{' at offset 0"},
		{"}", "unmatched '}' at offset 0"},
		{"user:id}", "unmatched '}' at offset 7"},
		{"{{id}", "unmatched '}' at offset 4"},
		{"{id}}", "unmatched '}' at offset 4"},
		{"}{id}", "unmatched '}' at offset 0"},
		{"{}", "empty column reference"},
		{"user:{}", "empty column reference"},
		{"{ }", "empty column reference"},
		{"{\t}", "empty column reference"},
		{"{ id}", "surrounding spaces"},
		{"{id }", "surrounding spaces"},
	}
	for _, tt := range tests {
		t.Run(tt.src, func(t *testing.T) {
			tmpl, err := mapping.ParseTemplate(tt.src)
			if err == nil {
				t.Fatalf("ParseTemplate(%q) = %+v, want error containing %q", tt.src, tmpl, tt.want)
			}
			if tmpl != nil {
				t.Errorf("ParseTemplate(%q) returned a template with its error", tt.src)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("ParseTemplate(%q) error %q, want it to contain %q", tt.src, err, tt.want)
			}
		})
	}
}

func mustTemplate(t testing.TB, src string) *mapping.Template {
	t.Helper()
	tmpl, err := mapping.ParseTemplate(src)
	if err != nil {
		t.Fatalf("ParseTemplate(%q): %v", src, err)
	}
	return tmpl
}

func TestAppendRender(t *testing.T) {
	tests := []struct {
		name   string
		src    string
		row    mapRow
		prefix string
		want   string
		ok     bool
	}{
		{"plain", "user:{id}", mapRow{"id": []byte("123")}, "", "user:123", true},
		{"appends to dst", "user:{id}", mapRow{"id": []byte("123")}, "KEEP|", "KEEP|user:123", true},
		{"spaces", "k:{v}", mapRow{"v": []byte("  two  spaces ")}, "", "k:  two  spaces ", true},
		{"colons", "k:{v}", mapRow{"v": []byte("a:b::c")}, "", "k:a:b::c", true},
		{"unicode", "k:{v}", mapRow{"v": []byte("Ünïcødé ✓ 日本")}, "", "k:Ünïcødé ✓ 日本", true},
		{"glob chars copied", "k:{v}", mapRow{"v": []byte(`*?[a-z]\`)}, "", `k:*?[a-z]\`, true},
		{"braces in value", "k:{v}", mapRow{"v": []byte("{id}{{")}, "", "k:{id}{{", true},
		{"binary bytes", "k:{v}", mapRow{"v": []byte{0, 0xff, '\n', 0x80}}, "", "k:\x00\xff\n\x80", true},
		{"empty value", "k:{v}:x", mapRow{"v": []byte{}}, "", "k::x", true},
		{"timestamp", "e:{at}", mapRow{"at": []byte("2024-01-02 03:04:05.123456+00")}, "", "e:2024-01-02 03:04:05.123456+00", true},
		{"NULL gives no key", "user:{id}", mapRow{"id": nil}, "", "", false},
		{"absent column gives no key", "user:{id}", mapRow{}, "", "", false},
		{"NULL after a rendered column leaves dst unchanged", "t:{a}:{b}", mapRow{"a": []byte("1"), "b": nil}, "KEEP|", "KEEP|", false},
		{"NULL in second of two columns", "{a}{b}", mapRow{"a": []byte("x")}, "", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tmpl := mustTemplate(t, tt.src)
			got, ok := tmpl.AppendRender([]byte(tt.prefix), tt.row)
			if ok != tt.ok || string(got) != tt.want {
				t.Errorf("AppendRender(%q) = %q, %v; want %q, %v", tt.src, got, ok, tt.want, tt.ok)
			}
		})
	}
}

func TestAppendPattern(t *testing.T) {
	tests := []struct {
		name string
		src  string
		row  mapRow
		want string
		ok   bool
	}{
		{"star value is escaped, template star kept", "search:users:{name}:*", mapRow{"name": []byte("*")}, `search:users:\*:*`, true},
		{"plain value", "search:users:{name}:*", mapRow{"name": []byte("alice")}, "search:users:alice:*", true},
		{"every metachar", "p:{v}", mapRow{"v": []byte(`a*b?c[d]e\f`)}, `p:a\*b\?c\[d\]e\\f`, true},
		{"template glob text untouched", "p:[ab]?{v}*\\x", mapRow{"v": []byte("[")}, `p:[ab]?\[*\x`, true},
		{"literal braces stay literal", "p:{{{v}}}*", mapRow{"v": []byte("?")}, `p:{\?}*`, true},
		{"other punctuation not escaped", "p:{v}", mapRow{"v": []byte("^$.+(){}|-:! ")}, "p:^$.+(){}|-:! ", true},
		{"unicode not escaped", "p:{v}", mapRow{"v": []byte("日本*")}, `p:日本\*`, true},
		{"NULL gives no pattern", "p:{v}:*", mapRow{"v": nil}, "", false},
		{"no columns", "user:*", nil, "user:*", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tmpl := mustTemplate(t, tt.src)
			got, ok := tmpl.AppendPattern(nil, tt.row)
			if ok != tt.ok || string(got) != tt.want {
				t.Errorf("AppendPattern(%q) = %q, %v; want %q, %v", tt.src, got, ok, tt.want, tt.ok)
			}
		})
	}
}

func TestAppendGlobEscaped(t *testing.T) {
	tests := []struct{ in, want string }{
		{"", ""},
		{"abc", "abc"},
		{"*", `\*`},
		{"?", `\?`},
		{"[", `\[`},
		{"]", `\]`},
		{`\`, `\\`},
		{`\*`, `\\\*`},
		{"a*b*", `a\*b\*`},
		{"^-!", "^-!"},
	}
	for _, tt := range tests {
		if got := mapping.AppendGlobEscaped([]byte("pre:"), []byte(tt.in)); string(got) != "pre:"+tt.want {
			t.Errorf("AppendGlobEscaped(%q) = %q, want %q", tt.in, got, "pre:"+tt.want)
		}
	}
}
