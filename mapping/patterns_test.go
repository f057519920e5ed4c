package mapping

import (
	"strings"
	"testing"
)

func TestPatternOptions(t *testing.T) {
	const head = "version: 1\ntables:\n  public.t:\n    keys: [\"t:{id}\"]\n    derived:\n      - patterns:\n"
	for _, tt := range []struct {
		name, items string
		path        string // of the one pattern, when it parses
		err         string // "line:col: ..." substring
	}{
		{"string", `          - "s:{id}:*"`, "scan", ""},
		{"indexed", "          - match: \"s:{id}:*\"\n            index: true", "index", ""},
		{"indexed and scanned", "          - match: \"s:{id}:*\"\n            index: true\n            also_scan: true", "index+scan", ""},
		{"index false", "          - match: \"s:{id}:*\"\n            index: false", "scan", ""},
		{"no trailing star", "          - match: \"s:{id}\"\n            index: true", "", "8:13: an indexed pattern must end in '*'"},
		{"glob before", "          - match: \"s:*:{id}:*\"\n            index: true", "", "8:13: an indexed pattern may hold no glob character"},
		{"also_scan alone", "          - match: \"s:{id}:*\"\n            also_scan: true", "", "8:13: also_scan only makes sense with index: true"},
		{"not a bool", "          - match: \"s:{id}:*\"\n            index: yes please", "", "8:20: must be true or false"},
		{"no match", "          - index: true", "", "7:13: a pattern mapping needs match"},
		{"unknown field", "          - match: \"s:{id}:*\"\n            indexed: true", "", `8:13: unknown field "indexed"`},
		{"bad template", "          - match: \"s:{id\"", "", "7:20: "},
	} {
		t.Run(tt.name, func(t *testing.T) {
			reg, err := Parse("deps.yaml", []byte(head+tt.items+"\n"))
			if tt.err != "" {
				pos, msg, _ := strings.Cut(tt.err, ": ")
				if err == nil || !strings.Contains(err.Error(), "deps.yaml:"+pos+": ") || !strings.Contains(err.Error(), msg) {
					t.Fatalf("error %v, want one containing %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			pats := reg.Tables["public.t"].Rules[1].Patterns
			if len(pats) != 1 || pats[0].Path() != tt.path {
				t.Fatalf("patterns %v, want one with path %s", pats, tt.path)
			}
		})
	}
}
