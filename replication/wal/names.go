package wal

import (
	"fmt"
	"strings"
)

// A qualified table name is written schema.table. Each part is taken
// literally (no case folding) unless it is double-quoted, which it must be
// when it contains a dot or a quote: public."a.b" names table
// a.b in schema public, and "" inside quotes is one quote. QualifiedName
// writes that form back, quoting only the parts that need it, so a name has
// one spelling: the key deps.yaml, logs and metrics use.

// ParseQualifiedName splits a schema-qualified table name into its parts.
func ParseQualifiedName(s string) (schema, table string, err error) {
	const hint = `must be schema-qualified, e.g. public.users; quote a part that contains a dot or a quote, e.g. public."a.b"`
	var parts []string
	rest := s
	for {
		part, tail, err := nextNamePart(rest)
		if err != nil {
			return "", "", fmt.Errorf("table name %q: %v: %s", s, err, hint)
		}
		parts = append(parts, part)
		if tail == "" {
			break
		}
		rest = tail[1:] // past the dot
	}
	if len(parts) != 2 {
		return "", "", fmt.Errorf("table name %q %s (found %d part(s))", s, hint, len(parts))
	}
	return parts[0], parts[1], nil
}

// nextNamePart reads one part of s; tail is "" or starts with the dot
// that ends the part.
func nextNamePart(s string) (part, tail string, err error) {
	if !strings.HasPrefix(s, `"`) {
		i := strings.IndexByte(s, '.')
		if i < 0 {
			i = len(s)
		}
		part, tail = s[:i], s[i:]
		if part == "" {
			return "", "", fmt.Errorf("empty part")
		}
		if strings.Contains(part, `"`) {
			return "", "", fmt.Errorf("%q: a quote may only begin a part", part)
		}
		return part, tail, nil
	}
	var b strings.Builder
	for i := 1; i < len(s); i++ {
		if s[i] != '"' {
			b.WriteByte(s[i])
			continue
		}
		if i+1 < len(s) && s[i+1] == '"' {
			b.WriteByte('"')
			i++
			continue
		}
		tail = s[i+1:]
		if tail != "" && tail[0] != '.' {
			return "", "", fmt.Errorf("unexpected %q after a quoted part", tail)
		}
		if b.Len() == 0 {
			return "", "", fmt.Errorf("empty part")
		}
		return b.String(), tail, nil
	}
	return "", "", fmt.Errorf("unclosed quote")
}

// QualifiedName joins schema and table into the form ParseQualifiedName
// reads.
func QualifiedName(schema, table string) string { return quotePart(schema) + "." + quotePart(table) }

func quotePart(s string) string {
	if !strings.ContainsAny(s, `."`) && s != "" {
		return s
	}
	return `"` + strings.ReplaceAll(s, `"`, `""`) + `"`
}
