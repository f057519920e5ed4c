// Package yamlnode reads YAML documents node by node so that every error can
// name the file, line, column and field it is about.
package yamlnode

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"

	"gopkg.in/yaml.v3"
)

// Error is a problem at one place in a YAML file.
type Error struct {
	File   string
	Line   int
	Column int
	Field  string // dotted path of the field, e.g. tables.public.users.keys[1]
	Msg    string
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d:%d", e.Line, e.Column)
	}
	b.WriteString(": ")
	if e.Field != "" {
		b.WriteString(e.Field)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Errors collects every problem in a file, so a user fixes them all in one pass.
type Errors []*Error

func (es Errors) Error() string {
	lines := make([]string, len(es))
	for i, e := range es {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

// Err returns nil when there are no errors, so callers can return it directly.
func (es Errors) Err() error {
	if len(es) == 0 {
		return nil
	}
	return es
}

// Doc is a parsed YAML file plus the errors found while reading it.
type Doc struct {
	File string
	Root *yaml.Node // the top-level mapping; nil for an empty document
	Errs Errors
}

// ReadFile parses path into a Doc.
func ReadFile(path string) (*Doc, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	return Parse(path, data)
}

// Parse parses data, naming it file in errors. A syntax error is returned as
// an *Error carrying the position yaml.v3 reports.
func Parse(file string, data []byte) (*Doc, error) {
	var root yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&root); err != nil {
		if errors.Is(err, io.EOF) {
			return &Doc{File: file}, nil
		}
		return nil, syntaxError(file, err)
	}
	doc := &Doc{File: file}
	if len(root.Content) == 1 {
		doc.Root = root.Content[0]
	}
	return doc, nil
}

// syntaxError turns yaml.v3's "yaml: line N: msg" into an *Error.
func syntaxError(file string, err error) error {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	var line int
	if n, _ := fmt.Sscanf(msg, "line %d:", &line); n == 1 {
		msg = strings.TrimSpace(msg[strings.Index(msg, ":")+1:])
	}
	return &Error{File: file, Line: line, Column: 1, Msg: "invalid YAML: " + msg}
}

// Errorf records a problem at node n.
func (d *Doc) Errorf(n *yaml.Node, field, format string, args ...any) {
	e := &Error{File: d.File, Field: field, Msg: fmt.Sprintf(format, args...)}
	if n != nil {
		e.Line, e.Column = n.Line, n.Column
	}
	d.Errs = append(d.Errs, e)
}

// Field is one key: value pair of a mapping.
type Field struct {
	Key   *yaml.Node
	Value *yaml.Node
	Path  string
}

// Mapping returns the pairs of a mapping node in document order, recording an
// error for a non-mapping node, a duplicate key, or a key not in known (when
// known is non-nil).
func (d *Doc) Mapping(n *yaml.Node, path string, known ...string) []Field {
	if n == nil {
		return nil
	}
	if n.Kind != yaml.MappingNode {
		d.Errorf(n, path, "must be a mapping, got %s", kindName(n))
		return nil
	}
	seen := make(map[string]bool, len(n.Content)/2)
	fields := make([]Field, 0, len(n.Content)/2)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		p := join(path, k.Value)
		if seen[k.Value] {
			d.Errorf(k, p, "duplicate key")
			continue
		}
		seen[k.Value] = true
		if known != nil && !contains(known, k.Value) {
			sorted := append([]string(nil), known...)
			sort.Strings(sorted)
			d.Errorf(k, p, "unknown field %q (known: %s)", k.Value, strings.Join(sorted, ", "))
			continue
		}
		fields = append(fields, Field{Key: k, Value: v, Path: p})
	}
	return fields
}

// String decodes a scalar string.
func (d *Doc) String(f Field) (string, bool) {
	if f.Value.Kind != yaml.ScalarNode || f.Value.Tag == "!!null" {
		d.Errorf(f.Value, f.Path, "must be a string, got %s", kindName(f.Value))
		return "", false
	}
	return f.Value.Value, true
}

// Int decodes a scalar integer.
func (d *Doc) Int(f Field) (int, bool) {
	var v int
	if f.Value.Kind != yaml.ScalarNode || f.Value.Tag != "!!int" || f.Value.Decode(&v) != nil {
		d.Errorf(f.Value, f.Path, "must be an integer, got %q", f.Value.Value)
		return 0, false
	}
	return v, true
}

// Strings decodes a sequence of strings; each element's node is returned so
// callers can report problems with one element at its own position.
func (d *Doc) Strings(f Field) ([]string, []*yaml.Node) {
	if f.Value.Kind != yaml.SequenceNode {
		d.Errorf(f.Value, f.Path, "must be a list of strings, got %s", kindName(f.Value))
		return nil, nil
	}
	out := make([]string, 0, len(f.Value.Content))
	nodes := make([]*yaml.Node, 0, len(f.Value.Content))
	for i, item := range f.Value.Content {
		if item.Kind != yaml.ScalarNode || item.Tag == "!!null" {
			d.Errorf(item, fmt.Sprintf("%s[%d]", f.Path, i), "must be a string, got %s", kindName(item))
			continue
		}
		out = append(out, item.Value)
		nodes = append(nodes, item)
	}
	return out, nodes
}

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.AliasNode:
		return "an alias"
	case yaml.ScalarNode:
		if n.Tag == "!!null" {
			return "null"
		}
		return fmt.Sprintf("%q", n.Value)
	}
	return "nothing"
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}
