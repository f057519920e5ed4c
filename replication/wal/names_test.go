package wal

import (
	"strings"
	"testing"
)

func TestParseQualifiedName(t *testing.T) {
	cases := []struct {
		in, schema, table string
		err               string // part of the error; "" for none
	}{
		{in: "public.users", schema: "public", table: "users"},
		{in: "public.Users", schema: "public", table: "Users"}, // taken literally, no folding
		{in: `public."a.b"`, schema: "public", table: "a.b"},
		{in: `"my.schema"."a.b"`, schema: "my.schema", table: "a.b"},
		{in: `"public".users`, schema: "public", table: "users"},
		{in: `public."say ""hi"""`, schema: "public", table: `say "hi"`},
		{in: `public."."`, schema: "public", table: "."},
		{in: "users", err: `"users" must be schema-qualified`},
		{in: "a.b.c", err: "must be schema-qualified"},
		{in: "public.", err: "empty part"},
		{in: ".users", err: "empty part"},
		{in: `public.""`, err: "empty part"},
		{in: `public."a.b`, err: "unclosed quote"},
		{in: `public."a"b`, err: `unexpected "b" after a quoted part`},
		{in: `public.a"b`, err: "a quote may only begin a part"},
	}
	for _, c := range cases {
		schema, table, err := ParseQualifiedName(c.in)
		switch {
		case c.err == "" && err != nil:
			t.Errorf("%s: %v", c.in, err)
		case c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)):
			t.Errorf("%s: error %v, want one containing %q", c.in, err, c.err)
		case c.err == "" && (schema != c.schema || table != c.table):
			t.Errorf("%s: (%q, %q), want (%q, %q)", c.in, schema, table, c.schema, c.table)
		}
		if c.err != "" {
			continue
		}
		// QualifiedName writes a form that reads back the same.
		q := QualifiedName(schema, table)
		if s2, t2, err := ParseQualifiedName(q); err != nil || s2 != schema || t2 != table {
			t.Errorf("%s: QualifiedName %q reads back as (%q, %q, %v)", c.in, q, s2, t2, err)
		}
	}
	for in, want := range map[[2]string]string{
		{"public", "users"}: "public.users",
		{"public", "a.b"}:   `public."a.b"`,
		{"a.b", "c"}:        `"a.b".c`,
		{"public", `x"y`}:   `public."x""y"`,
	} {
		if got := QualifiedName(in[0], in[1]); got != want {
			t.Errorf("QualifiedName(%q, %q) = %q, want %q", in[0], in[1], got, want)
		}
	}
}
