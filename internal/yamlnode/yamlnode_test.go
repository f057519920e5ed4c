package yamlnode_test

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/walbust/walbust/internal/yamlnode"
)

func TestErrorString(t *testing.T) {
	tests := []struct {
		err  yamlnode.Error
		want string
	}{
		{yamlnode.Error{File: "f.yaml", Line: 3, Column: 7, Field: "a.b[1]", Msg: "bad"}, "f.yaml:3:7: a.b[1]: bad"},
		{yamlnode.Error{File: "f.yaml", Line: 3, Column: 7, Msg: "bad"}, "f.yaml:3:7: bad"},
		{yamlnode.Error{File: "f.yaml", Field: "tables", Msg: "missing"}, "f.yaml: tables: missing"},
		{yamlnode.Error{File: "f.yaml", Msg: "empty"}, "f.yaml: empty"},
	}
	for _, tt := range tests {
		if got := tt.err.Error(); got != tt.want {
			t.Errorf("Error() = %q, want %q", got, tt.want)
		}
	}
	errs := yamlnode.Errors{&tests[0].err, &tests[3].err}
	if got, want := errs.Error(), "f.yaml:3:7: a.b[1]: bad\nf.yaml: empty"; got != want {
		t.Errorf("Errors.Error() = %q, want %q", got, want)
	}
	if err := (yamlnode.Errors{}).Err(); err != nil {
		t.Errorf("empty Errors.Err() = %v, want nil", err)
	}
	var target yamlnode.Errors
	if err := errs.Err(); !errors.As(err, &target) || len(target) != 2 {
		t.Errorf("Errors.Err() = %v", err)
	}
}

func mustParse(t *testing.T, src string) *yamlnode.Doc {
	t.Helper()
	doc, err := yamlnode.Parse("f.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	return doc
}

func TestParse(t *testing.T) {
	for _, src := range []string{"", "# comment\n"} {
		doc := mustParse(t, src)
		if doc.Root != nil || doc.File != "f.yaml" || len(doc.Errs) != 0 {
			t.Errorf("Parse(%q) = %+v, want an empty document", src, doc)
		}
	}
	// An explicit empty document is a null root, not a missing one.
	if doc := mustParse(t, "---\n"); doc.Root == nil || doc.Root.Tag != "!!null" {
		t.Errorf("Parse(---) root %+v, want a null scalar", doc.Root)
	}
	doc := mustParse(t, "a: 1\n")
	if doc.Root == nil || doc.Root.Kind != yaml.MappingNode || doc.Root.Line != 1 || doc.Root.Column != 1 {
		t.Errorf("root %+v", doc.Root)
	}

	_, err := yamlnode.Parse("f.yaml", []byte("a: 1\nb: [\n"))
	var e *yamlnode.Error
	if !errors.As(err, &e) || e.File != "f.yaml" || e.Line != 2 || !strings.HasPrefix(e.Error(), "f.yaml:2:1: invalid YAML: ") {
		t.Errorf("syntax error %#v", err)
	}
	if strings.Contains(e.Msg, "yaml:") || strings.Contains(e.Msg, "line 2") {
		t.Errorf("message %q repeats yaml.v3's prefix or line", e.Msg)
	}
}

func TestReadFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f.yaml")
	if err := os.WriteFile(path, []byte("a: 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	doc, err := yamlnode.ReadFile(path)
	if err != nil || doc.File != path || doc.Root == nil {
		t.Fatalf("ReadFile = %+v, %v", doc, err)
	}
	if _, err := yamlnode.ReadFile(path + ".missing"); err == nil || !strings.Contains(err.Error(), path+".missing") {
		t.Errorf("ReadFile(missing) = %v", err)
	}
}

func TestMapping(t *testing.T) {
	doc := mustParse(t, `top:
  b: 1
  a: 2
  zz: 3
  b: 4
list: [x]
`)
	fields := doc.Mapping(doc.Root, "")
	if len(fields) != 2 || fields[0].Path != "top" || fields[1].Path != "list" {
		t.Fatalf("top-level fields %+v", fields)
	}
	sub := doc.Mapping(fields[0].Value, fields[0].Path, "a", "b")
	var paths []string
	for _, f := range sub {
		paths = append(paths, f.Path)
	}
	if want := []string{"top.b", "top.a"}; !reflect.DeepEqual(paths, want) {
		t.Errorf("fields %q, want %q in document order", paths, want)
	}
	if doc.Mapping(fields[1].Value, "list", "x") != nil {
		t.Error("a list read as a mapping")
	}
	if doc.Mapping(nil, "none") != nil {
		t.Error("nil node read as a mapping")
	}
	want := []string{
		`f.yaml:4:3: top.zz: unknown field "zz" (known: a, b)`,
		`f.yaml:5:3: top.b: duplicate key`,
		`f.yaml:6:7: list: must be a mapping, got a list`,
	}
	if got := strings.Split(doc.Errs.Error(), "\n"); !reflect.DeepEqual(got, want) {
		t.Errorf("errors:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestScalars(t *testing.T) {
	doc := mustParse(t, `s: text
n: 42
q: "42"
f: 1.5
z: ~
l: [a, "b", 3, ~, [c], {d: e}]
m: {a: b}
`)
	fields := map[string]yamlnode.Field{}
	for _, f := range doc.Mapping(doc.Root, "") {
		fields[f.Path] = f
	}
	if s, ok := doc.String(fields["s"]); !ok || s != "text" {
		t.Errorf("String(s) = %q, %v", s, ok)
	}
	if s, ok := doc.String(fields["n"]); !ok || s != "42" {
		t.Errorf("String(n) = %q, %v", s, ok)
	}
	if n, ok := doc.Int(fields["n"]); !ok || n != 42 {
		t.Errorf("Int(n) = %d, %v", n, ok)
	}
	if len(doc.Errs) != 0 {
		t.Fatalf("unexpected errors: %v", doc.Errs)
	}
	// yaml.v3 truncates a float into an int field: 1.5 must not read as 1.
	for _, name := range []string{"q", "f", "m"} {
		if n, ok := doc.Int(fields[name]); ok {
			t.Errorf("Int(%s) = %d, want an error", name, n)
		}
	}
	for _, name := range []string{"z", "l", "m"} {
		if _, ok := doc.String(fields[name]); ok {
			t.Errorf("String(%s) succeeded", name)
		}
	}
	doc.Errs = nil
	strs, nodes := doc.Strings(fields["l"])
	if want := []string{"a", "b", "3"}; !reflect.DeepEqual(strs, want) || len(nodes) != 3 || nodes[1].Column != 8 {
		t.Errorf("Strings(l) = %q (%d nodes)", strs, len(nodes))
	}
	want := []string{
		"f.yaml:6:16: l[3]: must be a string, got null",
		"f.yaml:6:19: l[4]: must be a string, got a list",
		"f.yaml:6:24: l[5]: must be a string, got a mapping",
	}
	if got := strings.Split(doc.Errs.Error(), "\n"); !reflect.DeepEqual(got, want) {
		t.Errorf("errors:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	doc.Errs = nil
	if strs, _ := doc.Strings(fields["s"]); strs != nil || len(doc.Errs) != 1 || !strings.Contains(doc.Errs[0].Msg, `must be a list of strings, got "text"`) {
		t.Errorf("Strings(s) = %q, errors %v", strs, doc.Errs)
	}
}

func TestErrorfWithoutNode(t *testing.T) {
	doc := mustParse(t, "")
	doc.Errorf(nil, "tables", "missing %s", "x")
	if got := doc.Errs.Error(); got != "f.yaml: tables: missing x" {
		t.Errorf("got %q", got)
	}
}
