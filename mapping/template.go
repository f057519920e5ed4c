package mapping

import (
	"fmt"
	"strings"
)

// Template is a parsed key template such as "category:{category_id}:products".
// Rendering copies bytes: row values are never interpreted.
type Template struct {
	Source       string
	Line, Column int // position in deps.yaml, when loaded from it
	segments     []segment

	// Set when the registry is built: what an invalidation by this
	// template does.
	table   *Table
	rule    *Rule
	pattern bool

	// Indexed (patterns only, deps.yaml's index: true): the keys of the
	// pattern's family are found in the family's index set (see
	// protocol.IndexKey), which cacheaside fills, rather than by SCAN.
	// AlsoScan: they are scanned for as well (keys written by other means).
	Indexed, AlsoScan bool
}

// Path says how walbust finds the keys a pattern template matches, as
// explain and validate print it: "scan", "index" or "index+scan".
func (t *Template) Path() string {
	switch {
	case t.Indexed && t.AlsoScan:
		return "index+scan"
	case t.Indexed:
		return "index"
	}
	return "scan"
}

// checkIndexable: an indexed pattern is a family prefix and one trailing
// '*' ("search:{owner_id}:*"), so that matching the pattern and starting
// with the family are the same thing.
func (t *Template) checkIndexable() error {
	last := len(t.segments) - 1
	for i, s := range t.segments {
		if s.column != "" {
			continue
		}
		lit := s.literal
		if i == last {
			if !strings.HasSuffix(lit, "*") {
				return fmt.Errorf("an indexed pattern must end in '*' (a family prefix, then '*'), e.g. \"search:{owner_id}:*\"; %q does not", t.Source)
			}
			lit = lit[:len(lit)-1]
		}
		if strings.ContainsAny(lit, "*?[]\\") {
			return fmt.Errorf("an indexed pattern may hold no glob character but its final '*' (its family is the text before it); %q does: "+
				"leave index out to have it scanned", t.Source)
		}
	}
	if t.segments[last].column != "" {
		return fmt.Errorf("an indexed pattern must end in '*' (a family prefix, then '*'), e.g. \"search:{owner_id}:*\"; %q does not", t.Source)
	}
	return nil
}

type segment struct {
	literal string // used when column == ""
	column  string
}

// ParseTemplate parses src. "{col}" is a column reference; "{{" and "}}"
// are literal braces; anything else with a brace is an error.
func ParseTemplate(src string) (*Template, error) {
	if src == "" {
		return nil, fmt.Errorf("empty template")
	}
	if strings.TrimSpace(src) == "" {
		// Redis would accept it, but no application reads a key of blanks:
		// it is a slip in deps.yaml, and every invalidation by it a no-op.
		return nil, fmt.Errorf("template %q is only whitespace: write the key the application caches, e.g. \"user:{id}\"", src)
	}
	t := &Template{Source: src}
	var lit strings.Builder
	for i := 0; i < len(src); i++ {
		c := src[i]
		switch {
		case c == '{' && i+1 < len(src) && src[i+1] == '{':
			lit.WriteByte('{')
			i++
		case c == '}' && i+1 < len(src) && src[i+1] == '}':
			lit.WriteByte('}')
			i++
		case c == '}':
			return nil, fmt.Errorf("template %q: unmatched '}' at offset %d (write '}}' for a literal brace)", src, i)
		case c == '{':
			end := strings.IndexAny(src[i+1:], "{}")
			if end < 0 || src[i+1+end] != '}' {
				return nil, fmt.Errorf("template %q: unclosed '{' at offset %d (write '{{' for a literal brace)", src, i)
			}
			col := src[i+1 : i+1+end]
			if err := checkColumnName(col); err != nil {
				return nil, fmt.Errorf("template %q: %w", src, err)
			}
			if lit.Len() > 0 {
				t.segments = append(t.segments, segment{literal: lit.String()})
				lit.Reset()
			}
			t.segments = append(t.segments, segment{column: col})
			i += end + 1
		default:
			lit.WriteByte(c)
		}
	}
	if lit.Len() > 0 {
		t.segments = append(t.segments, segment{literal: lit.String()})
	}
	return t, nil
}

func checkColumnName(col string) error {
	if strings.TrimSpace(col) == "" {
		return fmt.Errorf("empty column reference {}")
	}
	if strings.TrimSpace(col) != col {
		return fmt.Errorf("column reference {%s} has surrounding spaces", col)
	}
	return nil
}

// Columns returns the referenced columns in order of appearance, once each.
func (t *Template) Columns() []string {
	var cols []string
	seen := map[string]bool{}
	for _, s := range t.segments {
		if s.column != "" && !seen[s.column] {
			seen[s.column] = true
			cols = append(cols, s.column)
		}
	}
	return cols
}

// Row gives a template the text of a column; ok is false when the value is
// NULL or not known.
type Row interface {
	Text(column string) (value []byte, ok bool)
}

// AppendRender appends the rendered key to dst. It returns ok=false, and dst
// unchanged, when a referenced column has no usable value.
func (t *Template) AppendRender(dst []byte, row Row) ([]byte, bool) {
	return t.appendRender(dst, row, false)
}

// AppendPattern renders a SCAN MATCH pattern: the template's own text keeps
// its glob characters, while row values have theirs escaped, so a value of
// "*" matches only a literal "*".
func (t *Template) AppendPattern(dst []byte, row Row) ([]byte, bool) {
	return t.appendRender(dst, row, true)
}

func (t *Template) appendRender(dst []byte, row Row, escape bool) ([]byte, bool) {
	start := len(dst)
	for _, s := range t.segments {
		if s.column == "" {
			dst = append(dst, s.literal...)
			continue
		}
		v, ok := row.Text(s.column)
		if !ok {
			return dst[:start], false
		}
		if escape {
			dst = AppendGlobEscaped(dst, v)
		} else {
			dst = append(dst, v...)
		}
	}
	return dst, true
}

// AppendGlobEscaped appends v with Redis glob metacharacters escaped.
func AppendGlobEscaped(dst, v []byte) []byte {
	for _, c := range v {
		switch c {
		case '*', '?', '[', ']', '\\':
			dst = append(dst, '\\')
		}
		dst = append(dst, c)
	}
	return dst
}

func (t *Template) String() string { return t.Source }
