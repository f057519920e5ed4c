package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// shadowCandidate drops the running deps.yaml's category listing key of
// products and adds a lookup rule (a category's name) and a pattern rule.
const shadowCandidate = `version: 1
tables:
  public.products:
    keys:
      - "product:{id}"
    derived:
      - query: "SELECT name FROM categories WHERE id = $1"
        args: [category_id]
        keys: ["category-name:{name}"]
      - patterns: ["search:{name}:*"]
    on_truncate:
      patterns: ["product:*", "category:*:products"]
  public.categories:
    keys:
      - "category:{id}"
      - "category:{id}:products"
    on_truncate:
      patterns: ["category:*"]
`

type shadowReport struct {
	Slot struct {
		Name      string `json:"name"`
		Temporary bool   `json:"temporary"`
		CreatedAt string `json:"created_at"`
		Confirmed string `json:"confirmed"`
	} `json:"slot"`
	Transactions int `json:"transactions"`
	Keyspace     struct {
		Known bool  `json:"known"`
		Keys  int64 `json:"keys"`
	} `json:"keyspace"`
	Tables []struct {
		Table   string         `json:"table"`
		Changes int            `json:"changes"`
		Ops     map[string]int `json:"ops"`
		Rules   []struct {
			Rule     string `json:"rule"`
			Patterns int    `json:"patterns"`
			Scan     *struct {
				Known bool `json:"known"`
			} `json:"scan"`
			Lookups int `json:"lookups"`
			Latency *struct {
				P50Ms float64 `json:"p50_ms"`
			} `json:"latency"`
		} `json:"rules"`
	} `json:"tables"`
	Diff map[string]struct {
		Keys     int `json:"keys"`
		Patterns int `json:"patterns"`
		Groups   []struct {
			Table    string   `json:"table"`
			Rule     string   `json:"rule"`
			Pattern  bool     `json:"pattern"`
			Count    int      `json:"count"`
			Examples []string `json:"examples"`
		} `json:"groups"`
	} `json:"diff"`
}

// lockedBuffer collects a process's output while the test reads it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// walbust shadow against live writes: the report counts the changes and
// shows the diff both ways; Redis and the configured slot are untouched,
// and the temporary slot is gone afterwards.
func TestShadow(t *testing.T) {
	e := newEnv(t, envOptions{seed: defaultSeed, noStart: true})
	e.writeFile("candidate.yaml", shadowCandidate)
	cached := []string{"product:1", "product:3", "category:3:products", "category:1:products", "category:9", "search:Dune:page1"}
	e.cache(cached...)
	slotBefore := e.opsSlotConfirmed()

	ctx, cancel := context.WithTimeout(e.ctx, time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, "shadow", "--config", e.configPath, "--deps", e.dir+"/candidate.yaml", "--duration", "4s", "--json")
	var stdout, stderr lockedBuffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	eventually(t, startTimeout, func() bool { return strings.Contains(stderr.String(), `"msg":"shadow streaming"`) },
		func() string { return "walbust shadow did not log \"shadow streaming\":\n" + stderr.String() })

	e.exec("INSERT INTO products (id, category_id, name, price_cents) VALUES (10, 3, 'Blue Train', 1299)")
	e.exec("UPDATE products SET name = 'Dune II' WHERE id = 1")
	e.exec("DELETE FROM products WHERE id = 3")
	e.exec("INSERT INTO categories (id, name) VALUES (9, 'film')")
	e.exec("INSERT INTO audit_log (note) VALUES ('unpublished')")

	if err := <-done; err != nil {
		t.Fatalf("walbust shadow: %v\nstdout:\n%s\nstderr:\n%s", err, stdout.String(), stderr.String())
	}
	var rep shadowReport
	if err := json.Unmarshal([]byte(stdout.String()), &rep); err != nil {
		t.Fatalf("shadow --json: %v\n%s", err, stdout.String())
	}
	out := stdout.String()

	changes := map[string]int{}
	for _, tr := range rep.Tables {
		changes[tr.Table] = tr.Changes
		if tr.Table != "public.products" {
			continue
		}
		if tr.Ops["insert"] != 1 || tr.Ops["update"] != 1 || tr.Ops["delete"] != 1 {
			t.Errorf("products ops %v, want one insert, update and delete", tr.Ops)
		}
		for _, r := range tr.Rules {
			switch r.Rule {
			case "derived[0]":
				if r.Lookups < 3 || r.Latency == nil {
					t.Errorf("the lookup rule ran %d lookups (latency %v), want at least 3 with a latency:\n%s", r.Lookups, r.Latency, out)
				}
			case "derived[1]":
				if r.Patterns < 3 || r.Scan == nil || !r.Scan.Known {
					t.Errorf("the pattern rule: %d patterns, SCAN cost %v; want at least 3 and a known cost:\n%s", r.Patterns, r.Scan, out)
				}
			}
		}
	}
	if changes["public.products"] != 3 || changes["public.categories"] != 1 || rep.Transactions < 4 {
		t.Errorf("changes %v in %d transactions, want 3 of products and 1 of categories in at least 4:\n%s", changes, rep.Transactions, out)
	}

	examples := func(side, table, rule string, pattern bool) []string {
		for _, g := range rep.Diff[side].Groups {
			if g.Table == table && g.Rule == rule && g.Pattern == pattern {
				return g.Examples
			}
		}
		return nil
	}
	// Added: the category's name by lookup (category 3 is music, 1 books),
	// and the search patterns.
	if ex := examples("only_candidate", "public.products", "derived[0]", false); !slices.Contains(ex, "category-name:music") || !slices.Contains(ex, "category-name:books") {
		t.Errorf("only the candidate: lookup keys %v, want category-name:music and category-name:books:\n%s", ex, out)
	}
	if ex := examples("only_candidate", "public.products", "derived[1]", true); !slices.Contains(ex, "search:Blue Train:*") || !slices.Contains(ex, "search:Dune II:*") {
		t.Errorf("only the candidate: patterns %v, want search:Blue Train:* and search:Dune II:*:\n%s", ex, out)
	}
	// Removed: the category listing key of a product's change.
	if ex := examples("only_running", "public.products", "keys", false); !slices.Contains(ex, "category:3:products") || !slices.Contains(ex, "category:1:products") {
		t.Errorf("only the running deps.yaml: %v, want category:3:products and category:1:products:\n%s", ex, out)
	}
	if d := rep.Diff["only_running"]; d.Keys < 3 || d.Patterns != 0 {
		t.Errorf("only the running deps.yaml: %d keys %d patterns, want at least 3 keys (insert, update, delete) and no pattern", d.Keys, d.Patterns)
	}
	if rep.Keyspace.Known != true || rep.Keyspace.Keys != int64(len(cached)) {
		t.Errorf("keyspace %+v, want the %d cached keys", rep.Keyspace, len(cached))
	}
	if !rep.Slot.Temporary || !strings.HasPrefix(rep.Slot.Name, "walbust_shadow_") || rep.Slot.CreatedAt == "" || rep.Slot.Confirmed == "" {
		t.Errorf("slot %+v: want a temporary walbust_shadow_ slot with its positions", rep.Slot)
	}

	// Redis untouched: every cached key survives, nothing was added.
	e.assertPresent(cached...)
	if n, err := e.rdb.DBSize(e.ctx).Result(); err != nil || n != int64(len(cached)) {
		t.Errorf("redis holds %d keys (%v), want the %d cached ones only", n, err, len(cached))
	}
	// The configured slot heard nothing; the temporary one is gone.
	if after := e.opsSlotConfirmed(); after != slotBefore {
		t.Errorf("the configured slot moved from %s to %s", slotBefore, after)
	}
	eventually(t, 10*time.Second, func() bool {
		var n int
		e.queryRow(`SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'walbust\_shadow\_%' OR temporary`, []any{&n})
		return n == 0
	}, func() string { return "a walbust_shadow slot (or a temporary one) is still in pg_replication_slots" })

	// The table output says the same, readably.
	text, errOut, code := e.opsWalbust("shadow", "--deps", e.dir+"/candidate.yaml", "--duration", "1s")
	t.Logf("table:\n%s", text)
	if code != 0 || !strings.Contains(text, "only the candidate renders") || !strings.Contains(text, "only the running deps.yaml renders") ||
		!strings.Contains(text, "derived[0]") || !strings.Contains(text, "temporary") {
		t.Errorf("walbust shadow (table) exited %d:\n%s%s", code, text, errOut)
	}
}

// A candidate that does not load is refused before anything is streamed,
// with exit 2 and the file:line:column of the problem.
func TestShadowRefusesABrokenCandidate(t *testing.T) {
	e := newEnv(t, envOptions{noStart: true})
	e.writeFile("broken.yaml", "version: 1\ntables:\n  public.products:\n    keys: [\"product:{id\"]\n")
	out, errOut, code := e.opsWalbust("shadow", "--deps", e.dir+"/broken.yaml", "--duration", "1s")
	if code != 2 || !strings.Contains(errOut, "broken.yaml:4:") || out != "" {
		t.Errorf("shadow with a broken candidate exited %d, want 2 naming broken.yaml:4:COLUMN:\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
	}
	var n int
	e.queryRow(`SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'walbust\_shadow\_%'`, []any{&n})
	if n != 0 {
		t.Errorf("%d shadow slot(s) after a refusal", n)
	}
}
