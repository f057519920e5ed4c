// Package luatest checks a package's embedded Lua scripts against the
// files they are embedded from, for the packages' unit tests.
package luatest

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"
)

var update = flag.Bool("update-lua", false, "rewrite testdata/lua.sha1 from the embedded scripts")

// Golden is where a package keeps the SHA1s of its scripts, in sha1sum's
// format ("<sha1>  lua/<name>.lua"), so `sha1sum -c testdata/lua.sha1` run
// in the package directory checks the files as well.
const Golden = "testdata/lua.sha1"

// Check runs in a package's directory (go test's working directory) and
// takes the package's embedded scripts by file name ("lua/fence.lua" → its
// source). It fails unless:
//   - every .lua file in lua/ is one of them (no orphan file) and each
//     embedded source is the file's content (no mix-up of names);
//   - each starts with a comment header and has code after it;
//   - each script's SHA1 (what EVALSHA names it by) is the one in Golden,
//     so a script only changes on purpose. Run the test with -update-lua
//     to accept a change.
func Check(t *testing.T, scripts map[string]string) {
	t.Helper()
	files, err := filepath.Glob("lua/*.lua")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if _, ok := scripts[f]; !ok {
			t.Errorf("%s is embedded by no script (an orphan: reference it or delete it)", f)
		}
	}
	var lines []string
	for name, src := range scripts {
		raw, err := os.ReadFile(name)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if string(raw) != src {
			t.Errorf("%s: the embedded source differs from the file", name)
		}
		if !strings.HasPrefix(src, "--") {
			t.Errorf("%s: no header comment (what KEYS and ARGV are, what it returns)", name)
		}
		if code(src) == "" {
			t.Errorf("%s: no code after the header", name)
		}
		lines = append(lines, fmt.Sprintf("%s  %s\n", redis.NewScript(src).Hash(), name))
	}
	sort.Strings(lines)
	want := strings.Join(lines, "")
	if *update {
		if err := os.MkdirAll(filepath.Dir(Golden), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(Golden, []byte(want), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	got, err := os.ReadFile(Golden)
	if err != nil {
		t.Fatalf("%v (run the test with -update-lua to create it)", err)
	}
	if string(got) != want {
		t.Errorf("script SHA1s changed (run the test with -update-lua if that is intended):\n%s: %q\nnow: %q",
			Golden, got, want)
	}
}

// code is src without its leading comment lines and blank lines.
func code(src string) string {
	lines := strings.Split(src, "\n")
	for len(lines) > 0 {
		l := strings.TrimSpace(lines[0])
		if l != "" && !strings.HasPrefix(l, "--") {
			break
		}
		lines = lines[1:]
	}
	return strings.TrimSpace(strings.Join(lines, "\n"))
}
