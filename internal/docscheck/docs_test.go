package docscheck

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"unicode"
)

// root is the repository's directory, seen from this package.
const root = "../.."

// maxREADME is the most README.md may weigh: the front page, with the rest
// in docs/.
const maxREADME = 15000

func TestREADMESize(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(root, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	if len(b) > maxREADME {
		t.Errorf("README.md is %d bytes, more than %d: move detail into a docs/ page and link it", len(b), maxREADME)
	}
}

// pages returns README.md and every docs/*.md, relative to root.
func pages(t *testing.T) []string {
	t.Helper()
	docs, err := filepath.Glob(filepath.Join(root, "docs", "*.md"))
	if err != nil {
		t.Fatal(err)
	}
	if len(docs) == 0 {
		t.Fatal("no docs/*.md pages")
	}
	out := []string{"README.md"}
	for _, d := range docs {
		rel, err := filepath.Rel(root, d)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, rel)
	}
	return out
}

func TestRelativeLinks(t *testing.T) {
	for _, page := range pages(t) {
		text := read(t, page)
		for _, l := range links(text) {
			if isExternal(l.target) {
				continue
			}
			path, frag, _ := strings.Cut(l.target, "#")
			file := page
			if path != "" {
				file = filepath.Join(filepath.Dir(page), filepath.FromSlash(path))
				if _, err := os.Stat(filepath.Join(root, file)); err != nil {
					t.Errorf("%s:%d: link %q: %s does not exist", page, l.line, l.target, file)
					continue
				}
			}
			if frag == "" {
				continue
			}
			if !strings.HasSuffix(file, ".md") {
				t.Errorf("%s:%d: link %q: an anchor into %s, which is not markdown", page, l.line, l.target, file)
				continue
			}
			if !anchors(read(t, file))[frag] {
				t.Errorf("%s:%d: link %q: %s has no heading with anchor #%s", page, l.line, l.target, file, frag)
			}
		}
	}
}

// Every docs page opens, after its title, with a list of links to its own
// sections, and that list names every ## section of the page.
func TestDocsPagesStartWithContents(t *testing.T) {
	for _, page := range pages(t) {
		if page == "README.md" {
			continue
		}
		lines := strings.Split(read(t, page), "\n")
		if !strings.HasPrefix(lines[0], "# ") {
			t.Errorf("%s: does not start with a # title", page)
			continue
		}
		i := 1
		for i < len(lines) && strings.TrimSpace(lines[i]) == "" {
			i++
		}
		listed := map[string]bool{}
		item := regexp.MustCompile(`^\s*- \[[^\]]+\]\(#([^)]+)\)\s*$`)
		for ; i < len(lines); i++ {
			m := item.FindStringSubmatch(lines[i])
			if m == nil {
				break
			}
			listed[m[1]] = true
		}
		if len(listed) == 0 {
			t.Errorf("%s: no contents list (\"- [Section](#anchor)\" lines) after the title", page)
			continue
		}
		for _, h := range headings(strings.Join(lines, "\n")) {
			if h.level == 2 && !listed[h.anchor] {
				t.Errorf("%s: the contents list does not link section %q (#%s)", page, h.text, h.anchor)
			}
		}
	}
}

func TestAnchor(t *testing.T) {
	for in, want := range map[string]string{
		"Caching without races":                          "caching-without-races",
		"Re-fencing after replica lag: `replicas:`":      "re-fencing-after-replica-lag-replicas",
		"Reloading deps.yaml (SIGHUP)":                   "reloading-depsyaml-sighup",
		"Endpoints (`listen`, default `127.0.0.1:9187`)": "endpoints-listen-default-1270019187",
		"Docker / docker-compose":                        "docker--docker-compose",
		"Is it keeping up?":                              "is-it-keeping-up",
		"Scale-out: Redis Cluster and shards (part 5)":   "scale-out-redis-cluster-and-shards-part-5",
		"snake_case and [a link](x.md)":                  "snake_case-and-a-link",
	} {
		if got := anchor(in); got != want {
			t.Errorf("anchor(%q) = %q, want %q", in, got, want)
		}
	}
	got := anchors("# A\n## B\n```\n# not a heading\n```\n## B\n### B\n")
	for _, a := range []string{"a", "b", "b-1", "b-2"} {
		if !got[a] {
			t.Errorf("anchors: missing #%s in %v", a, got)
		}
	}
	if got["not-a-heading"] {
		t.Error("anchors: a # line in a code block counted as a heading")
	}
}

func TestLinks(t *testing.T) {
	text := "see [a](docs/a.md#x) and `[not](a link)`\n```\n[no](code.md)\n```\n[b](#y), <https://go.dev/dl/>, [c](https://x)\n"
	var got []string
	for _, l := range links(text) {
		got = append(got, fmt.Sprintf("%d:%s", l.line, l.target))
	}
	want := "1:docs/a.md#x 5:#y 5:https://x"
	if strings.Join(got, " ") != want {
		t.Errorf("links = %q, want %q", strings.Join(got, " "), want)
	}
}

func read(t *testing.T, rel string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root, rel))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

type link struct {
	line   int
	target string
}

var (
	linkRE       = regexp.MustCompile(`\[[^\]]*\]\(([^)\s]+)(?:\s+"[^"]*")?\)`)
	codeSpanRE   = regexp.MustCompile("`[^`]*`")
	headingRE    = regexp.MustCompile(`^(#{1,6})\s+(.*?)\s*#*\s*$`)
	schemeRE     = regexp.MustCompile(`^[a-zA-Z][a-zA-Z0-9+.-]*:`)
	linkInTextRE = regexp.MustCompile(`\[([^\]]*)\]\([^)]*\)`)
)

// links returns the inline links of a markdown text, outside fenced code
// blocks and code spans.
func links(text string) []link {
	var out []link
	for i, l := range prose(text) {
		if l == "" {
			continue
		}
		for _, m := range linkRE.FindAllStringSubmatch(codeSpanRE.ReplaceAllString(l, ""), -1) {
			out = append(out, link{line: i + 1, target: m[1]})
		}
	}
	return out
}

// prose returns the text's lines with those of fenced code blocks (the
// fences included) blanked, so line numbers stay right.
func prose(text string) []string {
	lines := strings.Split(text, "\n")
	fence := ""
	for i, l := range lines {
		trimmed := strings.TrimSpace(strings.TrimLeft(l, "> "))
		if fence == "" && (strings.HasPrefix(trimmed, "```") || strings.HasPrefix(trimmed, "~~~")) {
			fence = trimmed[:3]
			lines[i] = ""
			continue
		}
		if fence != "" {
			if strings.HasPrefix(trimmed, fence) {
				fence = ""
			}
			lines[i] = ""
		}
	}
	return lines
}

func isExternal(target string) bool {
	return schemeRE.MatchString(target) || strings.HasPrefix(target, "//")
}

type heading struct {
	level        int
	text, anchor string
}

// headings returns the ATX headings of a markdown text with the anchors
// GitHub gives them, "-1", "-2"... appended to repeats.
func headings(text string) []heading {
	var out []heading
	seen := map[string]int{}
	for _, l := range prose(text) {
		m := headingRE.FindStringSubmatch(l)
		if m == nil {
			continue
		}
		a := anchor(m[2])
		if n, ok := seen[a]; ok {
			seen[a] = n + 1
			a = fmt.Sprintf("%s-%d", a, n+1)
		} else {
			seen[a] = 0
		}
		out = append(out, heading{level: len(m[1]), text: m[2], anchor: a})
	}
	return out
}

func anchors(text string) map[string]bool {
	out := map[string]bool{}
	for _, h := range headings(text) {
		out[h.anchor] = true
	}
	return out
}

// anchor is GitHub's anchor for a heading: the rendered text lower-cased,
// every character but letters, digits, spaces, '-' and '_' dropped, and
// spaces turned into '-'.
func anchor(text string) string {
	text = linkInTextRE.ReplaceAllString(text, "$1")
	var b strings.Builder
	for _, r := range strings.ToLower(text) {
		switch {
		case unicode.IsLetter(r) || unicode.IsDigit(r) || r == '-' || r == '_':
			b.WriteRune(r)
		case r == ' ':
			b.WriteByte('-')
		}
	}
	return b.String()
}
