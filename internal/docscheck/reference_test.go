package docscheck

import (
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/walbust/walbust/internal/config"
	"github.com/walbust/walbust/internal/metrics"
)

// docsText is every docs/*.md page, joined.
func docsText(t *testing.T) string {
	t.Helper()
	var b strings.Builder
	for _, p := range pages(t) {
		if strings.HasPrefix(p, "docs"+string(filepath.Separator)) {
			b.WriteString(read(t, p))
			b.WriteByte('\n')
		}
	}
	return b.String()
}

// Every walbust.yaml key, with its environment variable, is in docs/.
// Keys are looked for as their last part (the docs show them nested, as
// in the file) and as the full dotted path.
func TestDocsNameEveryConfigKey(t *testing.T) {
	docs := docsText(t)
	for _, k := range config.Keys() {
		leaf := k.Path[strings.LastIndex(k.Path, ".")+1:]
		if !strings.Contains(docs, k.Path) && !regexp.MustCompile(`(?m)^\s*(- )?`+regexp.QuoteMeta(leaf)+`:`).MatchString(docs) && !strings.Contains(docs, "`"+leaf+"`") {
			t.Errorf("config key %s is not in docs/*.md (as %q, or as a %s: line)", k.Path, k.Path, leaf)
		}
		if k.Env != "" && !strings.Contains(docs, k.Env) {
			t.Errorf("environment variable %s (config key %s) is not in docs/*.md", k.Env, k.Path)
		}
	}
}

// Every metric walbust registers is in docs/.
func TestDocsNameEveryMetric(t *testing.T) {
	docs := docsText(t)
	names := metrics.New("test", "walbust").Names()
	if len(names) < 10 {
		t.Fatalf("metrics.Names() = %v: too few to be all of them", names)
	}
	for _, n := range names {
		if !regexp.MustCompile(regexp.QuoteMeta(n) + `\b`).MatchString(docs) {
			t.Errorf("metric %s is not in docs/*.md", n)
		}
	}
}
