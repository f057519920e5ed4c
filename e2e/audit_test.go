package e2e

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/walbust/walbust/protocol"
)

// walbust audit against a real Redis: covered keys, uncovered families
// (with and without TTL), and walbust's own keys apart; --json and
// --max-uncovered.
func TestAudit(t *testing.T) {
	e := newEnv(t, envOptions{noSetup: true, deps: `version: 1
tables:
  public.products:
    action: bump
    keys: ["product:{id}"]
    derived:
      - patterns: ["product-search:{category_id}:*"]
  public.categories:
    keys: ["category:{id}"]
`})
	set := func(key, value string, ttl time.Duration) {
		t.Helper()
		if err := e.rdb.Set(e.ctx, key, value, ttl).Err(); err != nil {
			t.Fatal(err)
		}
	}
	for i := 1; i <= 5; i++ {
		set(fmt.Sprintf("product:%d", i), "v", time.Hour)
		set(fmt.Sprintf("product:%d:version", i), "12", 0)
		set(fmt.Sprintf("session:%08x-1111-4222-8333-%012x", i*7919, i), "s", 0)
	}
	for i := 1; i <= 3; i++ {
		set(fmt.Sprintf("product-search:%d:page1", i), "v", time.Hour)
		set(fmt.Sprintf("tmp:report:%d", i), "r", time.Hour)
	}
	set("category:1", protocol.TombstonePrefix+"5:tok", time.Minute)
	set(protocol.AppliedKey("walbust"), "0/1", 0)
	e.rdb.HSet(e.ctx, "hash:1", "f", "v")

	out, errOut, code := e.opsWalbust("audit", "--json", "--rate", "0")
	if code != 0 {
		t.Fatalf("walbust audit --json exited %d:\n%s%s", code, out, errOut)
	}
	var rep struct {
		Scanned   int64 `json:"scanned"`
		Covered   int64 `json:"covered"`
		Uncovered []struct {
			Shape      string   `json:"shape"`
			Count      int64    `json:"count"`
			NoTTLShare float64  `json:"share_without_ttl"`
			Examples   []string `json:"examples"`
		} `json:"uncovered"`
		Own []struct {
			Shape string `json:"shape"`
			Count int64  `json:"count"`
		} `json:"walbust_keys"`
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("audit --json: %v\n%s", err, out)
	}
	if rep.Scanned != 5*3+3*2+3 || rep.Covered != 8 {
		t.Errorf("scanned %d, covered %d; want 24, 8:\n%s", rep.Scanned, rep.Covered, out)
	}
	fams := map[string]float64{}
	counts := map[string]int64{}
	for _, f := range rep.Uncovered {
		fams[f.Shape], counts[f.Shape] = f.NoTTLShare, f.Count
	}
	if counts["session:{uuid}"] != 5 || fams["session:{uuid}"] != 1 {
		t.Errorf("session:{uuid}: %d keys, %.2f without TTL; want 5, all:\n%s", counts["session:{uuid}"], fams["session:{uuid}"], out)
	}
	if counts["tmp:report:{n}"] != 3 || fams["tmp:report:{n}"] != 0 {
		t.Errorf("tmp:report:{n}: %d keys, %.2f without TTL; want 3, none:\n%s", counts["tmp:report:{n}"], fams["tmp:report:{n}"], out)
	}
	if counts["hash:{n}"] != 1 || len(rep.Uncovered) != 3 {
		t.Errorf("uncovered families %+v, want session, tmp:report and hash", rep.Uncovered)
	}
	own := map[string]int64{}
	for _, f := range rep.Own {
		own[strings.Fields(f.Shape)[0]] = f.Count
	}
	if own["version"] != 5 || own["tombstone"] != 1 || own["position"] != 1 {
		t.Errorf("walbust's own keys %+v, want 5 version keys, 1 tombstone, 1 position", rep.Own)
	}

	out, errOut, code = e.opsWalbust("audit", "--rate", "100")
	if code != 0 || !strings.Contains(out, "uncovered families") || !strings.Contains(out, "session:{uuid}") {
		t.Errorf("walbust audit exited %d, want 0 and a table naming session:{uuid}:\n%s%s", code, out, errOut)
	}
	if _, errOut, code := e.opsWalbust("audit", "--rate", "0", "--max-uncovered", "4"); code != 1 || !strings.Contains(errOut, "session:{uuid}") {
		t.Errorf("audit --max-uncovered 4 exited %d, want 1 naming session:{uuid}:\n%s", code, errOut)
	}
	if _, errOut, code := e.opsWalbust("audit", "--rate", "0", "--max-uncovered", "5"); code != 0 {
		t.Errorf("audit --max-uncovered 5 exited %d, want 0:\n%s", code, errOut)
	}
}
