package mapping

import "testing"

func TestHasHashTag(t *testing.T) {
	tests := []struct {
		src     string
		pattern bool
		want    bool
	}{
		{"{{user:{id}}}", false, true}, // renders {user:5}
		{"user:{{{id}}}", false, true}, // renders user:{5}
		{"{{user}}:{id}", false, true}, // one slot for every user
		{"{{master-data}}", false, true},
		{"{{a}}{{b}}", false, true},
		{"user:{id}", false, false},
		{"master-data", false, false},
		{"{id}:{{x}}", false, false},  // a value comes first and may hold a '{'
		{"{{}}{{x}}", false, false},   // "{}" is no tag, and only the first '{' counts
		{"{{user:{id}", false, false}, // never closed
		{"{{{id}", false, false},
		{"{{user:*}}", true, true},
		{"{{user:{id}}}:*", true, true},
		{"search:*:{{x}}", true, false}, // * may match a '{'
		{"{{*}}", true, false},          // * may match nothing: "{}"
		{"{{*}}", false, true},          // as a key, "*" is a character
	}
	for _, tt := range tests {
		tmpl, err := ParseTemplate(tt.src)
		if err != nil {
			t.Fatalf("%q: %v", tt.src, err)
		}
		if got := tmpl.HasHashTag(tt.pattern); got != tt.want {
			t.Errorf("HasHashTag(%q, pattern %v) = %v, want %v", tt.src, tt.pattern, got, tt.want)
		}
	}
}
