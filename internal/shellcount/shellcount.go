// Package shellcount splits a shell snippet into the commands a reader
// types, so a test can hold documentation to a number of them (README's
// walkthrough: at most ten from git clone to walbust run).
package shellcount

import "strings"

// Commands returns the commands of script, each with its whitespace
// collapsed. A command is a logical line (backslash-newline continuations
// joined, and a line ending in a pipe continued too; blank lines and #
// comments dropped), split further on &&, || and ; outside quotes and
// outside $(...). A pipeline, a | b, is one command. It reads what README
// blocks hold, not every shell construct: here-documents, case arms and a
// lone & (background) are not recognized.
func Commands(script string) []string {
	var cmds []string
	var cur strings.Builder
	flush := func() {
		if c := strings.Join(strings.Fields(cur.String()), " "); c != "" {
			cmds = append(cmds, c)
		}
		cur.Reset()
	}
	var quote byte // ' or " while inside one
	depth := 0     // $( ... ) nesting: separators inside do not split
	wordStart := true
	for i := 0; i < len(script); i++ {
		ch := script[i]
		if quote == '\'' {
			cur.WriteByte(ch)
			if ch == '\'' {
				quote = 0
			}
			continue
		}
		if ch == '\\' && i+1 < len(script) {
			i++
			if script[i] != '\n' { // backslash-newline: the line goes on
				cur.WriteByte(ch)
				cur.WriteByte(script[i])
				wordStart = false
			}
			continue
		}
		if quote == '"' {
			cur.WriteByte(ch)
			if ch == '"' {
				quote = 0
			}
			continue
		}
		next := byte(0)
		if i+1 < len(script) {
			next = script[i+1]
		}
		switch {
		case ch == '\'' || ch == '"':
			quote = ch
			cur.WriteByte(ch)
		case ch == '#' && wordStart:
			for i+1 < len(script) && script[i+1] != '\n' {
				i++
			}
		case ch == '\n':
			if depth > 0 || strings.HasSuffix(strings.TrimSpace(cur.String()), "|") {
				cur.WriteByte(' ')
			} else {
				flush()
			}
		case depth == 0 && ch == ';':
			flush()
		case depth == 0 && (ch == '&' || ch == '|') && next == ch:
			flush()
			i++
		case ch == '$' && next == '(':
			depth++
			cur.WriteString("$(")
			i++
		case ch == '(' && depth > 0:
			depth++
			cur.WriteByte(ch)
		case ch == ')' && depth > 0:
			depth--
			cur.WriteByte(ch)
		default:
			cur.WriteByte(ch)
		}
		wordStart = strings.IndexByte(" \t\n;&|()", ch) >= 0
	}
	flush()
	return cmds
}
