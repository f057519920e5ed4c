package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/walbust/walbust/internal/throwaway"
	"github.com/walbust/walbust/protocol"
)

// regExampleDeps is the original design's deps.yaml, exactly as written there (the
// file the mapping unit tests load too). Tests that name positions in it
// (explain, log lines) count lines from 1 at "version: 1".
var regExampleDeps = func() string {
	data, err := os.ReadFile(filepath.Join("..", "mapping", "testdata", "example.deps.yaml"))
	if err != nil {
		panic(err) // a missing test fixture is a broken checkout
	}
	return string(data)
}()

// regExampleSchema is the schema the example deps.yaml describes, added to the
// repo's schema.sql (which already has products). users sends whole old rows
// because its keys and when_changed read non-key columns.
const regExampleSchema = `
CREATE TABLE users (
    id      bigint PRIMARY KEY,
    email   text   NOT NULL,
    name    text   NOT NULL,
    team_id bigint
);
ALTER TABLE users REPLICA IDENTITY FULL;

CREATE TABLE team_members (
    team_id bigint NOT NULL,
    user_id bigint NOT NULL,
    PRIMARY KEY (team_id, user_id)
);

CREATE TABLE settings (
    id    bigint PRIMARY KEY,
    value text   NOT NULL
);
`

// regExampleEnv starts walbust on the example deps.yaml and schema.
func regExampleEnv(t *testing.T, seed string) *env {
	t.Helper()
	return newEnv(t, envOptions{deps: regExampleDeps, extraSchema: regExampleSchema, seed: defaultSeed + seed})
}

// regFence is fence for the example deps.yaml, whose categories are not
// cached: it inserts a product (action bump) and waits for its version key
// to appear, then removes that key again so it never shows up in a test's
// view of the keyspace. Inserting a product invalidates nothing else.
func (e *env) regFence() {
	e.t.Helper()
	e.fences++
	id := 2_000_000 + e.fences
	key := fmt.Sprintf("product:%d:version", id)
	e.exec("INSERT INTO products (id, name, price_cents) VALUES ($1, 'fence', 0)", id)
	eventually(e.t, invalidateTimeout, func() bool { return e.exists(key) },
		func() string { return "fence version key " + key + " never appeared" })
	if err := e.rdb.Del(e.ctx, key).Err(); err != nil {
		e.t.Fatal(err)
	}
}

// regGet returns a string key's value.
func (e *env) regGet(key string) (string, bool) {
	e.t.Helper()
	v, err := e.rdb.Get(e.ctx, key).Result()
	if err != nil {
		if errors.Is(err, redis.Nil) {
			return "", false
		}
		e.t.Fatal(err)
	}
	return v, true
}

// regKeys returns every key in Redis, sorted.
func (e *env) regKeys() []string {
	e.t.Helper()
	var all []string
	iter := e.rdb.Scan(e.ctx, 0, "*", 1000).Iterator()
	for iter.Next(e.ctx) {
		// walbust's own bookkeeping, not a cache key a rule could touch.
		if k := iter.Val(); k != protocol.AppliedKey(e.name) && k != protocol.SettledKey(e.name) {
			all = append(all, iter.Val())
		}
	}
	if err := iter.Err(); err != nil {
		e.t.Fatal(err)
	}
	slices.Sort(all)
	return all
}

// regAssertKeys checks that Redis holds exactly want (call after a fence).
func (e *env) regAssertKeys(want ...string) {
	e.t.Helper()
	want = slices.Clone(want)
	slices.Sort(want)
	got := e.regKeys()
	if slices.Equal(got, want) {
		return
	}
	var missing, extra []string
	for _, k := range want {
		if !slices.Contains(got, k) {
			missing = append(missing, k)
		}
	}
	for _, k := range got {
		if !slices.Contains(want, k) {
			extra = append(extra, k)
		}
	}
	e.t.Errorf("Redis keys differ from what was expected:\n  invalidated but should have been kept: %q\n  present but unexpected: %q", missing, extra)
}

// regWALLSN is the current WAL insert position as a decimal byte position:
// the way bump writes versions. The insert position (not the write
// position, which lags behind with synchronous_commit=off) is past every
// record already inserted, commits included.
func (e *env) regWALLSN() *big.Int {
	e.t.Helper()
	var s string
	e.queryRow("SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::text", []any{&s})
	return regDecimal(e.t, s)
}

// regSlotConfirmed is a slot's confirmed_flush_lsn as a decimal byte position.
func (e *env) regSlotConfirmed(slot string) *big.Int {
	e.t.Helper()
	var s string
	e.queryRow("SELECT coalesce((confirmed_flush_lsn - '0/0'::pg_lsn)::text, '0') FROM pg_replication_slots WHERE slot_name = $1", []any{&s}, slot)
	return regDecimal(e.t, s)
}

func regDecimal(t *testing.T, s string) *big.Int {
	t.Helper()
	n, ok := new(big.Int).SetString(strings.TrimSpace(s), 10)
	if !ok {
		t.Fatalf("%q is not a decimal integer", s)
	}
	return n
}

// regWaitLog waits until walbust's log, from offset on, matches re.
func (e *env) regWaitLog(offset int64, re string, timeout time.Duration) string {
	e.t.Helper()
	rx := regexp.MustCompile(re)
	var match string
	eventually(e.t, timeout, func() bool {
		match = rx.FindString(e.logSince(offset))
		return match != ""
	}, func() string { return "walbust never logged a line matching " + re })
	return match
}

// regLogOffset is where the next log line will start.
func (e *env) regLogOffset() int64 {
	fi, err := os.Stat(e.logPath)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// regLogLines returns the log lines (from offset) that contain every one of
// parts.
func (e *env) regLogLines(offset int64, parts ...string) []string {
	var out []string
	for _, line := range strings.Split(e.logSince(offset), "\n") {
		ok := true
		for _, p := range parts {
			if !strings.Contains(line, p) {
				ok = false
				break
			}
		}
		if ok && line != "" {
			out = append(out, line)
		}
	}
	return out
}

// regStartWith is start with extra flags for `walbust run` (another slot,
// another checkpoint file).
func (e *env) regStartWith(args ...string) {
	e.t.Helper()
	e.startWith(args, nil)
}

// regDropSlots drops replication slots, waiting for their walsenders to let
// go of them; slots that do not exist are fine.
func (e *env) regDropSlots(slots ...string) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, s := range slots {
		sql := fmt.Sprintf("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = '%s'", s)
		for {
			err := pg.Exec(ctx, "postgres", sql)
			if err == nil {
				break
			}
			if !strings.Contains(err.Error(), "is active") || ctx.Err() != nil {
				e.t.Errorf("drop slot %s: %v", s, err)
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

// regMetric scrapes one unlabelled sample from walbust's /metrics, found via
// the "serving metrics" log line of the current run.
func (e *env) regMetric(offset int64, name string) float64 {
	e.t.Helper()
	m := regexp.MustCompile(`"msg":"serving metrics","addr":"([^"]+)"`).FindStringSubmatch(e.logSince(offset))
	if m == nil {
		e.t.Fatal(`no "serving metrics" line in the walbust log`)
	}
	ctx, cancel := context.WithTimeout(e.ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+m[1]+"/metrics", nil)
	if err != nil {
		e.t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				e.t.Fatalf("metric %s: %v", line, err)
			}
			return f
		}
	}
	e.t.Fatalf("metric %s not found in /metrics", name)
	return 0
}

// regDedicatedPostgres starts a Postgres cluster of the test's own and makes
// it the package's pg until the test ends, so that newEnv, psql and the
// cleanups use it and the test may stop it without disturbing any other.
// Call it before newEnv: the swap is undone after newEnv's cleanups.
func regDedicatedPostgres(t *testing.T) *throwaway.Postgres {
	t.Helper()
	dir, err := os.MkdirTemp("", "walbust-e2e-pg-own-")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	own, err := throwaway.StartPostgres(ctx, dir)
	if err != nil {
		os.RemoveAll(dir)
		t.Fatal(err)
	}
	t.Cleanup(func() { own.Close() })
	shared := pg
	pg = own
	t.Cleanup(func() { pg = shared })
	return own
}

// regExplainLine is one invalidation printed by walbust explain.
type regExplainLine struct {
	action, kind, key, pos, rule, detail string
}

// regParseExplain reads the invalidation lines of walbust explain's output
// (those before the list of keys that could not be rendered).
func regParseExplain(out string) []regExplainLine {
	var lines []regExplainLine
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, "could not be rendered") {
			break
		}
		if !strings.HasPrefix(l, "  ") {
			continue
		}
		f := strings.Fields(l)
		if len(f) < 5 {
			continue
		}
		el := regExplainLine{action: f[0], kind: f[1], key: f[2], pos: f[3], rule: f[4]}
		if i := strings.Index(f[3], "deps.yaml:"); i >= 0 {
			el.pos = f[3][i:]
		}
		if len(f) > 5 {
			el.detail = strings.Join(f[5:], " ")
		}
		lines = append(lines, el)
	}
	return lines
}
