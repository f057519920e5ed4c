package e2e

// End-to-end tests of the deps.yaml language: every construct of
// the example, run by the real binary against the real services.

import (
	"context"
	"fmt"
	"math/big"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// The example, exactly as written, loads and validates against a
// matching schema, and `run` starts on it.
func TestRegistryExampleValidates(t *testing.T) {
	e := newEnv(t, envOptions{deps: regExampleDeps, extraSchema: regExampleSchema, noStart: true})

	out, code := e.walbust("validate")
	if code != 0 {
		t.Fatalf("walbust validate exited %d on the issue's example, want 0:\n%s", code, out)
	}
	if !strings.Contains(out, "deps.yaml: ok (3 tables)") {
		t.Errorf("validate did not say ok for 3 tables:\n%s", out)
	}
	// Legal but risky: tables without on_truncate are warned about, at the
	// position of the table's name.
	for _, w := range []string{
		"warning: " + filepath.Join(e.dir, "deps.yaml") + ":20:3: public.products has no on_truncate rules",
		"warning: " + filepath.Join(e.dir, "deps.yaml") + ":23:3: public.settings has no on_truncate rules",
	} {
		if !strings.Contains(out, w) {
			t.Errorf("validate output lacks %q:\n%s", w, out)
		}
	}
	if strings.Contains(out, "public.users has no on_truncate") {
		t.Errorf("validate warns about public.users, which has on_truncate:\n%s", out)
	}

	e.start()
}

// Direct keys render from both images; a derived rule with when_changed is
// skipped by UPDATEs that change none of its columns (even when they assign
// them), and fires for the old and the new group when one does change.
func TestRegistryDerivedKeysWhenChanged(t *testing.T) {
	e := regExampleEnv(t, "INSERT INTO users VALUES (1, 'alice@example.com', 'alice', 3);")
	e.cache("unrelated", "team:3:members", "leaderboard:global", "search:users:alice:1",
		"user:1", "user:1:profile", "user-by-email:alice@example.com", "user-by-email:alice@new.example")

	// name and team_id are assigned but keep their values: derived[0] is
	// skipped. Everything else fires: the direct keys under both emails and
	// the search pattern (no when_changed).
	e.exec("UPDATE users SET email = 'alice@new.example', name = 'alice', team_id = 3 WHERE id = 1")
	e.waitGone("user:1", "user:1:profile", "user-by-email:alice@example.com", "user-by-email:alice@new.example", "search:users:alice:1")
	e.regFence()
	e.regAssertKeys("unrelated", "team:3:members", "leaderboard:global")

	// A move between teams: both teams' member lists, and the leaderboard.
	e.cache("user:1", "team:4:members", "team:5:members")
	e.exec("UPDATE users SET team_id = 4 WHERE id = 1")
	e.waitGone("user:1", "team:3:members", "team:4:members", "leaderboard:global")
	e.regFence()
	e.regAssertKeys("unrelated", "team:5:members")

	// A rename: derived[0] for the (unchanged) team, and the search pages
	// under the old name as well as the new one.
	e.cache("team:4:members", "leaderboard:global", "search:users:alice:1", "search:users:alicia:1", "search:users:bob:1")
	e.exec("UPDATE users SET name = 'alicia' WHERE id = 1")
	e.waitGone("team:4:members", "leaderboard:global", "search:users:alice:1", "search:users:alicia:1")
	e.regFence()
	e.regAssertKeys("unrelated", "team:5:members", "search:users:bob:1")

	// when_changed is about UPDATEs: an INSERT and a DELETE always fire.
	e.cache("team:5:members", "leaderboard:global", "user:2", "user-by-email:bob@example.com")
	e.psql("INSERT INTO users VALUES (2, 'bob@example.com', 'bob', 5)")
	e.waitGone("team:5:members", "leaderboard:global", "user:2", "user-by-email:bob@example.com", "search:users:bob:1")
	e.cache("team:5:members", "leaderboard:global", "user:2", "search:users:bob:1")
	e.psql("DELETE FROM users WHERE id = 2")
	e.waitGone("team:5:members", "leaderboard:global", "user:2", "search:users:bob:1")
	e.regFence()
	e.regAssertKeys("unrelated")
}

// When the old value is unknown (the replica identity stopped sending it
// after walbust validated the table), when_changed fires: over-invalidate,
// never under-invalidate. walbust also warns, naming the fix.
func TestRegistryWhenChangedUnknownOldValueFires(t *testing.T) {
	e := regExampleEnv(t, "INSERT INTO users VALUES (1, 'alice@example.com', 'alice', 3);")
	off := e.regLogOffset()
	e.exec("ALTER TABLE users REPLICA IDENTITY DEFAULT")
	e.cache("user:1", "team:3:members", "leaderboard:global", "team:9:members")

	// Only the email changes, but without the old row walbust cannot know.
	e.exec("UPDATE users SET email = 'alice@new.example' WHERE id = 1")
	e.waitGone("user:1", "team:3:members", "leaderboard:global")
	e.regFence()
	e.regAssertKeys("team:9:members")

	if lines := e.regLogLines(off, `"level":"warn"`, "replica identity does not send old values", "ALTER TABLE public.users REPLICA IDENTITY FULL"); len(lines) == 0 {
		t.Error("no warning that public.users stopped sending old values (with the ALTER TABLE fix)")
	}
}

// `on:` restricts the operations a rule serves.
func TestRegistryOnRestrictsOperations(t *testing.T) {
	e := newEnv(t, envOptions{extraSchema: regExampleSchema, seed: "INSERT INTO users VALUES (1, 'alice@example.com', 'alice', 3);", deps: `version: 1
tables:
  public.users:
    keys: ["user:{id}"]
    derived:
      - keys: ["users:count", "users:team:{team_id}:count"]
        on: [insert, delete]
      - keys: ["users:renamed:{id}"]
        on: [update]
  public.categories:
    keys: ["category:{id}"]
`})
	e.cache("users:count", "users:team:3:count", "users:renamed:1", "users:renamed:2", "user:1", "user:2")

	e.exec("UPDATE users SET name = 'alicia' WHERE id = 1")
	e.waitGone("user:1", "users:renamed:1")
	e.fence()
	e.regAssertKeys("users:count", "users:team:3:count", "users:renamed:2", "user:2")

	e.exec("INSERT INTO users VALUES (2, 'bob@example.com', 'bob', 3)")
	e.waitGone("user:2", "users:count", "users:team:3:count")
	e.fence()
	e.regAssertKeys("users:renamed:2")

	e.cache("users:count", "users:team:3:count", "user:2")
	e.exec("DELETE FROM users WHERE id = 2")
	e.waitGone("user:2", "users:count", "users:team:3:count")
	e.fence()
	e.regAssertKeys("users:renamed:2")
}

// search:users:{name}:* removes every page for that name and nothing else;
// glob characters in a name match only themselves.
func TestRegistryPatternsEscapeRowValues(t *testing.T) {
	e := regExampleEnv(t, `INSERT INTO users VALUES
  (1, 'alice@example.com', 'alice', NULL),
  (2, 'star@example.com', '*', NULL),
  (3, 'q@example.com', '?', NULL),
  (4, 'br@example.com', '[a]', NULL),
  (5, 'bs@example.com', '\', NULL);`)
	own := map[int][]string{
		1: {"search:users:alice:1", "search:users:alice:2", "search:users:alice:page:3"},
		2: {"search:users:*:1", "search:users:*:2"},
		3: {"search:users:?:1"},
		4: {"search:users:[a]:1"},
		5: {`search:users:\:1`},
	}
	// What an unescaped value would also have matched, and more.
	others := []string{
		"search:users:alicex:1", "search:users:bob:1", "search:users:a:1", "search:users:b:1",
		"search:users:ab:1", "search:users::1", "search:users:*", `search:users:\*:1`,
		"search:users:[a:1", "search:users:x:y:1", "user:9", "session:alice",
	}
	e.cache(others...)
	for _, keys := range own {
		e.cache(keys...)
	}
	// Enough pages for alice that the SCAN takes several cursors and the
	// deletes several batches.
	pipe := e.rdb.Pipeline()
	for i := range 2500 {
		k := fmt.Sprintf("search:users:alice:page:%d", i+10)
		own[1] = append(own[1], k)
		pipe.Set(e.ctx, k, "cached", 0)
	}
	if _, err := pipe.Exec(e.ctx); err != nil {
		t.Fatal(err)
	}
	left := slices.Clone(others)
	for _, keys := range own {
		left = append(left, keys...)
	}
	for _, id := range []int{2, 3, 4, 5, 1} {
		// Patterns are SCANned, never listed with KEYS (which blocks Redis).
		if err := e.rdb.ConfigResetStat(e.ctx).Err(); err != nil {
			t.Fatal(err)
		}
		e.exec("UPDATE users SET email = email || '.new' WHERE id = $1", id)
		e.waitGone(own[id][:min(len(own[id]), 5)]...)
		e.regFence()
		stats := e.rdb.Info(e.ctx, "commandstats").Val()
		scans := 0
		if m := regexp.MustCompile(`cmdstat_scan:calls=(\d+)`).FindStringSubmatch(stats); m != nil {
			scans, _ = strconv.Atoi(m[1])
		}
		if strings.Contains(stats, "cmdstat_keys:") || scans == 0 || (id == 1 && scans < 3) {
			t.Errorf("user %d: want SCAN (3 calls or more for alice's 2500 pages) and never KEYS; Redis command stats:\n%s", id, stats)
		}
		left = slices.DeleteFunc(left, func(k string) bool { return slices.Contains(own[id], k) })
		e.regAssertKeys(left...)
		if t.Failed() {
			t.Fatalf("after the update of user %d (name %q) the keyspace is not as expected", id, map[int]string{1: "alice", 2: "*", 3: "?", 4: "[a]", 5: `\`}[id])
		}
	}

	// An INSERT and a DELETE of a user named * too.
	e.cache(own[2]...)
	e.exec("INSERT INTO users VALUES (6, 'star2@example.com', '*', NULL)")
	e.waitGone(own[2]...)
	e.regFence()
	e.regAssertKeys(others...)
	e.cache(own[2]...)
	e.exec("DELETE FROM users WHERE id = 6")
	e.waitGone(own[2]...)
	e.regFence()
	e.regAssertKeys(others...)
}

// A query rule renders its keys over each result row of the lookup, run
// after the commit with the row's columns as arguments.
func TestRegistryQueryRenderedOverResultRows(t *testing.T) {
	e := regExampleEnv(t, `INSERT INTO users VALUES (1, 'alice@example.com', 'alice', NULL), (2, 'bob@example.com', 'bob', NULL);
INSERT INTO team_members VALUES (10, 1), (20, 1), (30, 2), (40, 3);`)
	e.cache("team:10:members", "team:20:members", "team:30:members", "team:40:members", "team:50:members")

	e.exec("UPDATE users SET email = 'alice@new.example' WHERE id = 1")
	e.waitGone("team:10:members", "team:20:members")
	e.regFence()
	e.regAssertKeys("team:30:members", "team:40:members", "team:50:members")

	e.psql("INSERT INTO users VALUES (3, 'carol@example.com', 'carol', NULL)")
	e.waitGone("team:40:members")
	e.psql("DELETE FROM users WHERE id = 2")
	e.waitGone("team:30:members")
	e.regFence()
	e.regAssertKeys("team:50:members")
}

// A lookup that keeps failing stalls the stream instead of dropping
// invalidations: the keys stay, the slot is not confirmed past the write,
// an error says why (and where in deps.yaml), a metric counts it, and once
// the query works again the keys go.
func TestRegistryFailingQueryIsNotAcknowledged(t *testing.T) {
	e := regExampleEnv(t, `INSERT INTO users VALUES (1, 'alice@example.com', 'alice', NULL);
INSERT INTO team_members VALUES (10, 1), (20, 1);`)
	e.regFence()
	keys := []string{"user:1", "team:10:members", "team:20:members"}
	e.cache(keys...)
	off := e.regLogOffset()

	e.exec("ALTER TABLE team_members RENAME TO team_members_renamed")
	e.exec("UPDATE users SET email = 'alice@new.example' WHERE id = 1")
	after := e.regWALLSN() // at or past the end of the write's commit record

	// Retried (attempt 2 comes at least half a second after attempt 1, by
	// when a wrongly acknowledged batch would have been reported: the
	// status interval is 200ms).
	e.regWaitLog(off, `"level":"error"[^\n]*"msg":"cannot derive invalidations; batch not acknowledged, retrying"[^\n]*`+
		`deps\.yaml:15:16: query of public\.users derived\[2\][^\n]*relation \\"team_members\\" does not exist[^\n]*"attempt":2`, time.Minute)
	e.assertPresent(keys...)
	if confirmed := e.regSlotConfirmed(e.name); confirmed.Cmp(after) >= 0 {
		t.Errorf("slot confirmed_flush_lsn %s is at or past the unapplied write (which ends at or before %s)", confirmed, after)
	}
	if n := e.regMetric(0, "walbust_lookup_errors_total"); n < 2 {
		t.Errorf("walbust_lookup_errors_total = %v, want at least 2 failed attempts counted", n)
	}
	if t.Failed() {
		t.FailNow()
	}

	// The fix: nothing was lost.
	e.exec("ALTER TABLE team_members_renamed RENAME TO team_members")
	eventually(t, 2*time.Minute, func() bool {
		return !e.exists("user:1") && !e.exists("team:10:members") && !e.exists("team:20:members")
	}, func() string { return "keys of the stalled write are still cached after the query was fixed" })
	e.regFence()
	eventually(t, invalidateTimeout, func() bool { return e.regSlotConfirmed(e.name).Cmp(after) >= 0 },
		func() string {
			return fmt.Sprintf("slot confirmed_flush_lsn %s never passed the write (%s)", e.regSlotConfirmed(e.name), after)
		})
}

// TRUNCATE applies on_truncate; a table without it warns at startup and
// logs an error naming the keys it could not derive.
func TestRegistryOnTruncate(t *testing.T) {
	e := regExampleEnv(t, "INSERT INTO users VALUES (1, 'alice@example.com', 'alice', 3), (2, 'bob@example.com', 'bob', NULL);")
	for _, w := range []string{"deps.yaml:20:3: public.products has no on_truncate rules", "deps.yaml:23:3: public.settings has no on_truncate rules"} {
		if len(e.regLogLines(0, `"level":"warn"`, w)) == 0 {
			t.Errorf("no startup warning %q", w)
		}
	}
	if lines := e.regLogLines(0, "public.users has no on_truncate"); len(lines) > 0 {
		t.Errorf("walbust warned about public.users, which has on_truncate: %s", lines[0])
	}

	userKeys := []string{"user:1", "user:2:profile", "user:999", "user-by-email:alice@example.com", "search:users:alice:1", "search:users:bob:page:2", "search:users:*"}
	kept := []string{"team:3:members", "leaderboard:global", "product:1", "master-data", "users:count", "user", "session:1"}
	e.cache(append(slices.Clone(userKeys), kept...)...)
	e.psql("TRUNCATE users")
	e.waitGone(userKeys...)
	e.regFence()
	e.regAssertKeys(kept...)

	off := e.regLogOffset()
	e.psql("TRUNCATE products")
	line := e.regWaitLog(off, `[^\n]*"level":"error"[^\n]*invalidation incomplete[^\n]*`, invalidateTimeout)
	for _, want := range []string{`"table":"public.products"`, `"op":"truncate"`, "no on_truncate rules in", `these keys were not invalidated: \"product:{id}\"`} {
		if !strings.Contains(line, want) {
			t.Errorf("the TRUNCATE error line lacks %s: %s", want, line)
		}
	}
	e.regFence()
	e.regAssertKeys(kept...)
}

// bump sets {key}:version to the commit LSN (a decimal integer) and leaves
// the key itself to its readers.
func TestRegistryBumpSetsCommitLSN(t *testing.T) {
	e := regExampleEnv(t, "")
	e.cache("product:1", "product:2")

	var last *big.Int
	for i, write := range []string{
		"UPDATE products SET price_cents = 1 WHERE id = 1",
		"UPDATE products SET price_cents = 2 WHERE id = 1",
	} {
		before := e.regWALLSN()
		e.exec(write)
		after := e.regWALLSN()
		var v string
		eventually(t, invalidateTimeout, func() bool {
			var ok bool
			v, ok = e.regGet("product:1:version")
			return ok && (last == nil || v != last.String())
		}, func() string {
			return fmt.Sprintf("write %d: product:1:version not set or not raised (holds %q)", i+1, v)
		})
		got := regDecimal(t, v)
		if got.Cmp(before) <= 0 || got.Cmp(after) > 0 {
			t.Errorf("write %d: product:1:version = %s, want the commit LSN: in (%s, %s]", i+1, got, before, after)
		}
		if last != nil && got.Cmp(last) <= 0 {
			t.Errorf("write %d: version %s is not above the previous %s", i+1, got, last)
		}
		last = got
	}
	e.regFence()
	e.regAssertKeys("product:1", "product:2", "product:1:version")
}

// version_key, stale_key and stale_ttl are configurable, in defaults and per
// table; a table-level action overrides the default.
func TestRegistryCustomVersionAndStaleKeys(t *testing.T) {
	e := newEnv(t, envOptions{extraSchema: regExampleSchema, seed: defaultSeed + "INSERT INTO settings VALUES (1, 'v1');", deps: `version: 1
defaults:
  action: bump
  version_key: "ver:{key}"
  stale_key: "last-good:{key}"
  stale_ttl: 90s
tables:
  public.products:
    keys: ["product:{id}", "category:{category_id}:products"]
  public.settings:
    action: stale
    keys: ["master-data", "setting:{id}"]
  public.categories:
    action: delete
    keys: ["category:{id}"]
`})
	e.cache("product:1", "category:1:products", "setting:1")
	if err := e.rdb.Set(e.ctx, "master-data", "v1-json", 0).Err(); err != nil {
		t.Fatal(err)
	}

	before := e.regWALLSN()
	e.exec("UPDATE products SET price_cents = 1 WHERE id = 1")
	after := e.regWALLSN()
	eventually(t, invalidateTimeout, func() bool { return e.exists("ver:product:1") && e.exists("ver:category:1:products") },
		func() string { return "ver:product:1 / ver:category:1:products not set" })
	for _, k := range []string{"ver:product:1", "ver:category:1:products"} {
		v, _ := e.regGet(k)
		if got := regDecimal(t, v); got.Cmp(before) <= 0 || got.Cmp(after) > 0 {
			t.Errorf("%s = %s, want the commit LSN in (%s, %s]", k, got, before, after)
		}
	}

	e.exec("UPDATE settings SET value = 'v2' WHERE id = 1")
	e.waitGone("master-data", "setting:1")
	if v, ok := e.regGet("last-good:master-data"); !ok || v != "v1-json" {
		t.Errorf("last-good:master-data = %q (present %v), want the old value v1-json", v, ok)
	}
	for _, k := range []string{"last-good:master-data", "last-good:setting:1"} {
		if ttl := e.rdb.PTTL(e.ctx, k).Val(); ttl <= 80*time.Second || ttl > 90*time.Second {
			t.Errorf("PTTL %s = %v, want about stale_ttl 90s (in (80s, 90s])", k, ttl)
		}
	}

	// categories: delete, despite the default bump.
	e.fence()
	e.regAssertKeys("product:1", "category:1:products", "ver:product:1", "ver:category:1:products", "last-good:master-data", "last-good:setting:1")
}

// A bump replayed (the same transaction streamed again from a copy of the
// slot) leaves the version as it is, and never lowers a higher one.
func TestRegistryBumpReplayNeverMovesBackwards(t *testing.T) {
	e := regExampleEnv(t, "INSERT INTO users VALUES (1, 'alice@example.com', 'alice', NULL);")
	copies := []string{e.name + "_same", e.name + "_higher", e.name + "_lower"}
	t.Cleanup(func() {
		if e.proc != nil {
			e.stop()
		}
		e.regDropSlots(copies...)
	})
	e.regFence()
	for _, c := range copies {
		e.exec("SELECT pg_copy_logical_replication_slot($1, $2)", e.name, c)
	}

	// One transaction: the bump, and a delete whose key shows that a replay
	// has happened.
	e.cache("user:1")
	before := e.regWALLSN()
	e.psql("BEGIN; UPDATE products SET price_cents = 1 WHERE id = 1; UPDATE users SET email = 'alice@new.example' WHERE id = 1; COMMIT;")
	after := e.regWALLSN()
	e.waitGone("user:1")
	version, ok := e.regGet("product:1:version")
	if !ok {
		t.Fatal("product:1:version not set once the transaction was applied")
	}
	v := regDecimal(t, version)
	if v.Cmp(before) <= 0 || v.Cmp(after) > 0 {
		t.Fatalf("product:1:version = %s, want the commit LSN in (%s, %s]", v, before, after)
	}
	e.stop()

	replay := func(slot, set, want string) {
		t.Helper()
		if err := e.rdb.Set(e.ctx, "product:1:version", set, 0).Err(); err != nil {
			t.Fatal(err)
		}
		e.cache("user:1")
		e.regStartWith("--slot", slot, "--checkpoint", filepath.Join(e.dir, slot+".checkpoint"))
		e.waitGone("user:1") // the transaction was streamed and applied again
		e.regFence()
		e.stop()
		if got, _ := e.regGet("product:1:version"); got != want {
			t.Errorf("replay on %s with the version at %s: product:1:version = %s, want %s", slot, set, got, want)
		}
	}
	higher := new(big.Int).Add(v, big.NewInt(1000)).String()
	lower := new(big.Int).Sub(v, big.NewInt(1)).String()
	replay(copies[0], v.String(), v.String()) // unchanged
	replay(copies[1], higher, higher)         // never lowered
	replay(copies[2], lower, v.String())      // raised to the same commit LSN
}

// stale: the live key goes, its value survives under {key}:stale for
// stale_ttl, so a reader can serve it while the database is down (the
// master-data outage). The database here is the test's own, so it can be
// stopped.
func TestRegistryStaleServedDuringOutage(t *testing.T) {
	own := regDedicatedPostgres(t)
	e := regExampleEnv(t, "INSERT INTO settings VALUES (1, 'v1');")
	if err := e.rdb.Set(e.ctx, "master-data", `{"currency":"EUR"}`, 0).Err(); err != nil {
		t.Fatal(err)
	}

	e.exec("UPDATE settings SET value = 'v2' WHERE id = 1")
	e.waitGone("master-data")
	if v, ok := e.regGet("master-data:stale"); !ok || v != `{"currency":"EUR"}` {
		t.Fatalf("master-data:stale = %q (present %v), want the last good value", v, ok)
	}
	if ttl := e.rdb.PTTL(e.ctx, "master-data:stale").Val(); ttl <= 9*time.Minute || ttl > 10*time.Minute {
		t.Errorf("PTTL master-data:stale = %v, want about stale_ttl 10m (in (9m, 10m])", ttl)
	}

	// The outage. The reader's refresh from the database fails, and it
	// serves the last good value from Redis.
	e.db.Close(e.ctx)
	ctx, cancel := context.WithTimeout(e.ctx, 2*time.Minute)
	defer cancel()
	if err := own.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	value, source := regReadMasterData(e, own.URL(e.name))
	if source != "stale" || value != `{"currency":"EUR"}` {
		t.Errorf("during the outage the reader got %q from %s, want the last good value from master-data:stale", value, source)
	}
	if ttl := e.rdb.PTTL(e.ctx, "master-data:stale").Val(); ttl <= 0 {
		t.Errorf("PTTL master-data:stale = %v during the outage", ttl)
	}

	// The database is back; walbust carries on. The live value may be of
	// any type: the rollover keeps it whole.
	if err := own.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	var err error
	if e.db, err = pg.Connect(e.ctx, e.name); err != nil {
		t.Fatal(err)
	}
	if value, source := regReadMasterData(e, own.URL(e.name)); source != "database" || value != "v2" {
		t.Errorf("after the outage the reader got %q from %s, want v2 from the database", value, source)
	}
	e.assertRunning()
	if err := e.rdb.HSet(e.ctx, "master-data", "currency", "USD", "locale", "en").Err(); err != nil {
		t.Fatal(err)
	}
	e.exec("UPDATE settings SET value = 'v3' WHERE id = 1")
	eventually(t, reconnectTimeout, func() bool { return !e.exists("master-data") },
		func() string { return "master-data still cached after a write made once the database was back" })
	if got := e.rdb.HGetAll(e.ctx, "master-data:stale").Val(); got["currency"] != "USD" || got["locale"] != "en" || len(got) != 2 {
		t.Errorf("master-data:stale = %v, want the hash that was live", got)
	}
	if ttl := e.rdb.PTTL(e.ctx, "master-data:stale").Val(); ttl <= 9*time.Minute || ttl > 10*time.Minute {
		t.Errorf("PTTL master-data:stale = %v after the second rollover, want in (9m, 10m]", ttl)
	}

	// A missing live key is not an error: the stale value stays as it is.
	off := e.regLogOffset()
	e.exec("UPDATE settings SET value = 'v4' WHERE id = 1")
	e.regFence()
	if got := e.rdb.HGet(e.ctx, "master-data:stale", "currency").Val(); got != "USD" {
		t.Errorf("master-data:stale currency = %q after an update with no live key, want USD kept", got)
	}
	if lines := e.regLogLines(off, `"level":"error"`); len(lines) > 0 {
		t.Errorf("walbust logged an error for a stale rollover of a missing key: %s", lines[0])
	}
}

// regReadMasterData is an application's read path: refresh from the database,
// and when that fails, serve the last good value.
func regReadMasterData(e *env, url string) (value, source string) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(e.ctx, 5*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err == nil {
		defer conn.Close(context.Background())
		if err = conn.QueryRow(ctx, "SELECT value FROM settings WHERE id = 1").Scan(&value); err == nil {
			return value, "database"
		}
	}
	if _, ok := e.regGet("master-data"); ok {
		e.t.Fatal("master-data is live: the stale rollover did not remove it")
	}
	v, ok := e.regGet("master-data:stale")
	if !ok {
		return "", "nowhere (" + err.Error() + ")"
	}
	return v, "stale"
}

// validate reports every kind of mistake, each at its place, in one run;
// run refuses to start on them.
func TestRegistryValidateReportsEveryMistake(t *testing.T) {
	e := newEnv(t, envOptions{noStart: true, extraSchema: regExampleSchema + `
CREATE TABLE accounts (id bigint PRIMARY KEY, email text NOT NULL);  -- default replica identity
CREATE TABLE unpublished (id bigint PRIMARY KEY);`, deps: `version: 1
tables:
  public.users:
    keys: ["user:{id}"]
  public.accounts:
    keys: ["account:{id}"]
`})
	e.writeFile("deps.yaml", `version: 1
tables:
  public.nosuch:
    keys: ["nosuch:{id}"]
  public.users:
    keys:
      - "user:{id}"
      - "user:{nickname}"
    derived:
      - keys: ["team:{team_id}:members"]
        when_changed: [name, shoe_size]
      - query: "SELEC team_id FROM team_members WHERE user_id = $1"
        args: [id]
        keys: ["team:{team_id}:members"]
      - query: "SELECT team_id FROM team_members WHERE user_id = $1 AND team_id = $2"
        args: [id]
        keys: ["team:{team_id}:members"]
      - query: "SELECT user_id FROM team_members WHERE team_id = $1"
        args: [team_id]
        keys: ["team:{team_id}:members:{user_id}"]
  public.accounts:
    keys: ["account:{id}", "account-by-email:{email}"]
    derived:
      - keys: ["accounts:list"]
        when_changed: [email]
      - keys: ["accounts:new:{email}"]
        on: [insert]
  public.unpublished:
    keys: ["unpublished:{id}"]
`)
	deps := filepath.Join(e.dir, "deps.yaml")
	want := []struct {
		pos  string // line:column
		msgs []string
	}{
		{"3:3", []string{"table public.nosuch does not exist"}},
		{"8:9", []string{`no column "nickname"`}},
		{"11:30", []string{`no column "shoe_size"`}},
		{"12:16", []string{"query does not prepare", "syntax error"}},
		{"15:16", []string{"query takes 2 parameter(s) but args lists 1"}},
		{"20:16", []string{`template "team:{team_id}:members:{user_id}" uses {team_id}, which the query does not return`}},
		{"22:28", []string{"replica identity DEFAULT", `"email"`, `ALTER TABLE "public"."accounts" REPLICA IDENTITY FULL`}},
		{"25:24", []string{"replica identity DEFAULT", `"email"`, `ALTER TABLE "public"."accounts" REPLICA IDENTITY FULL`}},
		// 26: an insert-only rule needs no old values: no problem there.
		{"28:3", []string{"public.unpublished is not in publication " + e.name}},
	}
	check := func(command, out string) {
		t.Helper()
		for _, w := range want {
			prefix := deps + ":" + w.pos + ": "
			var line string
			for _, l := range strings.Split(out, "\n") {
				if strings.HasPrefix(l, prefix) {
					line = l
				}
			}
			if line == "" {
				t.Errorf("%s does not report a problem at %s:\n%s", command, w.pos, out)
				continue
			}
			for _, m := range w.msgs {
				if !strings.Contains(line, m) {
					t.Errorf("%s: the problem at %s does not say %q: %s", command, w.pos, m, line)
				}
			}
		}
		if got := regexp.MustCompile(`(?m)^`+regexp.QuoteMeta(deps)+`:\d+:\d+: `).FindAllString(out, -1); len(got) != len(want) {
			t.Errorf("%s reported %d problems, want %d:\n%s", command, len(got), len(want), out)
		}
	}

	out, code := e.walbust("validate")
	if code == 0 {
		t.Errorf("walbust validate exited 0 on a registry full of mistakes:\n%s", out)
	}
	if !strings.Contains(out, fmt.Sprintf("%d problem(s)", len(want))) {
		t.Errorf("validate does not sum up %d problem(s):\n%s", len(want), out)
	}
	check("validate", out)

	out, code = e.walbust("run")
	if code != 2 {
		t.Errorf("walbust run exited %d on a registry that does not validate, want 2:\n%s", code, out)
	}
	check("run", out)
	if strings.Contains(out, `"msg":"streaming"`) {
		t.Errorf("walbust run streamed despite validation errors:\n%s", out)
	}
}

// Mistakes found while loading (unknown fields, a bad action, a bad
// template) stop every command with exit 2 and their positions.
func TestRegistryLoadErrorsAreUsageErrors(t *testing.T) {
	e := newEnv(t, envOptions{noSetup: true, deps: `version: 1
tables:
  public.users:
    action: purge
    keys: ["user:{id}", "user:{id"]
    derived:
      - keys: ["team:{team_id}:members"]
        when_changd: [team_id]
`})
	deps := filepath.Join(e.dir, "deps.yaml")
	want := []struct{ pos, msg string }{
		{"4:13", `unknown action "purge"`},
		{"5:25", `unclosed '{'`},
		{"8:9", `unknown field "when_changd"`},
	}
	for _, args := range [][]string{
		{"run"},
		{"validate"},
		{"explain", "--table", "public.users", "--op", "insert", "--new", `{"id":1}`},
	} {
		out, code := e.walbust(args[0], args[1:]...)
		if code != 2 {
			t.Errorf("walbust %s exited %d on a deps.yaml that does not load, want 2:\n%s", args[0], code, out)
		}
		for _, w := range want {
			if !strings.Contains(out, deps+":"+w.pos+": ") || !strings.Contains(out, w.msg) {
				t.Errorf("walbust %s does not report %s at %s:\n%s", args[0], w.msg, w.pos, out)
			}
		}
	}
}

// explain prints what a change would do (action, key or pattern, rule and
// position), running lookups, and touches nothing in Redis.
func TestRegistryExplain(t *testing.T) {
	e := newEnv(t, envOptions{deps: regExampleDeps, extraSchema: regExampleSchema, noStart: true, seed: defaultSeed + `
INSERT INTO users VALUES (1, 'alice@example.com', 'alice', 3);
INSERT INTO team_members VALUES (10, 1), (20, 1);`})
	cached := []string{"user:1", "user:1:profile", "user-by-email:alice@example.com", "team:3:members", "team:4:members",
		"leaderboard:global", "search:users:alice:1", "team:10:members", "team:20:members", "product:1", "master-data",
		"user:7", "search:users:*:1"}
	e.cache(cached...)

	alice := func(team int, email string) string {
		return fmt.Sprintf(`{"id":1,"email":%q,"name":"alice","team_id":%d}`, email, team)
	}
	cases := []struct {
		name   string
		args   []string
		header string
		want   []regExplainLine
		also   []string // further lines of output
		// unrendered: for each key that could not be rendered, words its
		// line must hold (template, position, what was missing).
		unrendered [][]string
	}{{
		name:   "team change",
		args:   []string{"--table", "public.users", "--op", "update", "--old", alice(3, "alice@example.com"), "--new", alice(4, "alice@example.com")},
		header: "update public.users: 9 invalidation(s), 0 rule(s) skipped, 1 lookup(s)",
		want: []regExplainLine{
			{"delete", "key", "user:1", "deps.yaml:7:9", "keys", ""},
			{"delete", "key", "user:1:profile", "deps.yaml:8:9", "keys", ""},
			{"delete", "key", "user-by-email:alice@example.com", "deps.yaml:9:9", "keys", ""},
			{"delete", "key", "team:3:members", "deps.yaml:11:16", "derived[0]", ""},
			{"delete", "key", "leaderboard:global", "deps.yaml:11:42", "derived[0]", ""},
			{"delete", "key", "team:4:members", "deps.yaml:11:16", "derived[0]", ""},
			{"delete", "pattern", "search:users:alice:*", "deps.yaml:13:20", "derived[1]", ""},
			{"delete", "key", "team:10:members", "deps.yaml:17:16", "derived[2]", ""},
			{"delete", "key", "team:20:members", "deps.yaml:17:16", "derived[2]", ""},
		},
	}, {
		name:   "email change",
		args:   []string{"--table", "public.users", "--op", "update", "--old", alice(3, "alice@example.com"), "--new", alice(3, "alice@new.example")},
		header: "update public.users: 7 invalidation(s), 1 rule(s) skipped, 1 lookup(s)",
		want: []regExplainLine{
			{"delete", "key", "user:1", "deps.yaml:7:9", "keys", ""},
			{"delete", "key", "user:1:profile", "deps.yaml:8:9", "keys", ""},
			{"delete", "key", "user-by-email:alice@example.com", "deps.yaml:9:9", "keys", ""},
			{"delete", "key", "user-by-email:alice@new.example", "deps.yaml:9:9", "keys", ""},
			{"delete", "pattern", "search:users:alice:*", "deps.yaml:13:20", "derived[1]", ""},
			{"delete", "key", "team:10:members", "deps.yaml:17:16", "derived[2]", ""},
			{"delete", "key", "team:20:members", "deps.yaml:17:16", "derived[2]", ""},
		},
	}, {
		name:   "insert of a user named *",
		args:   []string{"--table", "public.users", "--op", "insert", "--new", `{"id":7,"email":"s@example.com","name":"*","team_id":null}`},
		header: "insert public.users: 5 invalidation(s), 0 rule(s) skipped, 1 lookup(s)",
		want: []regExplainLine{
			{"delete", "key", "user:7", "deps.yaml:7:9", "keys", ""},
			{"delete", "key", "user:7:profile", "deps.yaml:8:9", "keys", ""},
			{"delete", "key", "user-by-email:s@example.com", "deps.yaml:9:9", "keys", ""},
			{"delete", "key", "leaderboard:global", "deps.yaml:11:42", "derived[0]", ""},
			{"delete", "pattern", `search:users:\*:*`, "deps.yaml:13:20", "derived[1]", ""},
		},
	}, {
		name:   "bump",
		args:   []string{"--table", "public.products", "--op", "update", "--old", `{"id":1,"price_cents":999}`, "--new", `{"id":1,"price_cents":5}`},
		header: "update public.products: 1 invalidation(s), 0 rule(s) skipped, 0 lookup(s)",
		want:   []regExplainLine{{"bump", "key", "product:1", "deps.yaml:22:12", "keys", "set product:1:version to the commit LSN if higher"}},
	}, {
		name:   "stale",
		args:   []string{"--table", "public.settings", "--op", "delete", "--old", `{"id":1}`},
		header: "delete public.settings: 1 invalidation(s), 0 rule(s) skipped, 0 lookup(s)",
		want:   []regExplainLine{{"stale", "key", "master-data", "deps.yaml:26:12", "keys", "move to master-data:stale for 10m0s"}},
	}, {
		name:   "truncate with on_truncate",
		args:   []string{"--table", "public.users", "--op", "truncate"},
		header: "truncate public.users: 3 invalidation(s), 0 rule(s) skipped, 0 lookup(s)",
		want: []regExplainLine{
			{"delete", "pattern", "user:*", "deps.yaml:19:18", "on_truncate", ""},
			{"delete", "pattern", "user-by-email:*", "deps.yaml:19:28", "on_truncate", ""},
			{"delete", "pattern", "search:users:*", "deps.yaml:19:47", "on_truncate", ""},
		},
	}, {
		name:   "delete with only the key given",
		args:   []string{"--table", "public.users", "--op", "delete", "--old", `{"id":1}`},
		header: "delete public.users: 5 invalidation(s), 0 rule(s) skipped, 1 lookup(s)",
		want: []regExplainLine{
			{"delete", "key", "user:1", "deps.yaml:7:9", "keys", ""},
			{"delete", "key", "user:1:profile", "deps.yaml:8:9", "keys", ""},
			{"delete", "key", "leaderboard:global", "deps.yaml:11:42", "derived[0]", ""},
			{"delete", "key", "team:10:members", "deps.yaml:17:16", "derived[2]", ""},
			{"delete", "key", "team:20:members", "deps.yaml:17:16", "derived[2]", ""},
		},
		also: []string{"3 key(s) could not be rendered: a value they need was not given (or not sent by the replica identity):"},
		unrendered: [][]string{
			{"user-by-email:{email}", "deps.yaml:9:9", "keys", "missing from the old row: email"},
			{"team:{team_id}:members", "deps.yaml:11:16", "derived[0]", "missing from the old row: team_id"},
			{"search:users:{name}:*", "deps.yaml:13:20", "derived[1]", "missing from the old row: name"},
		},
	}, {
		name:   "truncate without on_truncate",
		args:   []string{"--table", "public.products", "--op", "truncate"},
		header: "truncate public.products: 0 invalidation(s), 0 rule(s) skipped, 0 lookup(s)",
		also:   []string{`problem: no on_truncate rules in ` + filepath.Join(e.dir, "deps.yaml") + `, so these keys were not invalidated: "product:{id}"`},
	}}
	for _, c := range cases {
		out, code := e.walbust("explain", c.args...)
		if code != 0 {
			t.Errorf("%s: walbust explain exited %d:\n%s", c.name, code, out)
			continue
		}
		if !strings.Contains(out, c.header+"\n") {
			t.Errorf("%s: explain output lacks the summary %q:\n%s", c.name, c.header, out)
		}
		if got := regParseExplain(out); !slices.Equal(got, c.want) {
			t.Errorf("%s: explain printed\n%s\nwant the invalidations (in order)\n%v\ngot %v", c.name, out, c.want, got)
		}
		for _, l := range c.also {
			if !strings.Contains(out, l+"\n") {
				t.Errorf("%s: explain output lacks %q:\n%s", c.name, l, out)
			}
		}
	next:
		for _, words := range c.unrendered {
			for _, line := range strings.Split(out, "\n") {
				if regContainsAll(line, words) {
					continue next
				}
			}
			t.Errorf("%s: explain output has no line naming the unrendered key with %q:\n%s", c.name, words, out)
		}
	}
	// Nothing in Redis changed: no key gone, no version or stale key made.
	e.regAssertKeys(cached...)
}

// Templates: {{ and }} are literal braces, and values render as Postgres
// prints them in walbust's pinned session (TimeZone, DateStyle,
// IntervalStyle, extra_float_digits), whatever the database's defaults:
// both the row images from the stream and the lookup's result rows.
func TestRegistryTemplatesRenderPinnedText(t *testing.T) {
	e := newEnv(t, envOptions{extraSchema: `
CREATE TABLE events (
    id    bigint PRIMARY KEY,
    at    timestamptz NOT NULL,
    score float8 NOT NULL,
    dur   interval NOT NULL,
    d     date NOT NULL
);
ALTER TABLE events REPLICA IDENTITY FULL;
-- Defaults that print every one of those types differently.
DO $$ BEGIN
  EXECUTE format('ALTER DATABASE %I SET TimeZone = %L', current_database(), 'Asia/Kolkata');
  EXECUTE format('ALTER DATABASE %I SET DateStyle = %L', current_database(), 'SQL, DMY');
  EXECUTE format('ALTER DATABASE %I SET IntervalStyle = %L', current_database(), 'sql_standard');
  EXECUTE format('ALTER DATABASE %I SET extra_float_digits = %L', current_database(), '0');
END $$;`, deps: `version: 1
tables:
  public.events:
    keys:
      - "event:{id}:{at}"
      - "event-score:{score}"
      - "event-dur:{dur}"
      - "event-day:{d}"
      - "lit:{{{id}}}"
      - "json:{{\"id\":{id}}}"
    derived:
      - query: "SELECT at AS q_at, score AS q_score FROM events WHERE id = $1"
        args: [id]
        keys: ["q:{q_at}:{q_score}"]
  public.categories:
    keys: ["category:{id}"]
`})
	pinned := []string{
		"event:1:2024-01-02 03:04:05.5+00",
		"event-score:0.3333333333333333",
		"event-dur:1 day 02:00:00",
		"event-day:2024-01-02",
		"lit:{1}",
		`json:{"id":1}`,
		"q:2024-01-02 03:04:05.5+00:0.3333333333333333",
	}
	e.cache(pinned...)

	e.psql("INSERT INTO events VALUES (1, '2024-01-02 03:04:05.5+00', 1/3.0, '1 day 2 hours', '2024-01-02')")
	e.waitGone(pinned...)

	// The same values as the database's defaults print them: keys a
	// renderer following the session defaults would have produced.
	var at, score, dur, d string
	e.queryRow("SELECT at::text, score::text, dur::text, d::text FROM events WHERE id = 1", []any{&at, &score, &dur, &d})
	unpinned := []string{"event:1:" + at, "event-score:" + score, "event-dur:" + dur, "event-day:" + d, "q:" + at + ":" + score}
	for _, k := range unpinned {
		if slices.Contains(pinned, k) {
			t.Fatalf("the database's defaults print %q as walbust's pinned session does: the test proves nothing", k)
		}
	}
	e.cache(unpinned...)
	e.fence()
	e.regAssertKeys(unpinned...)

	// An UPDATE renders the old image (sent by the walsender) the same way;
	// the lookup runs after the commit, so it sees only the new score.
	newKeys := []string{"event-score:0.6666666666666666", "q:2024-01-02 03:04:05.5+00:0.6666666666666666"}
	e.cache(append(slices.Clone(pinned), newKeys...)...)
	e.exec("UPDATE events SET score = 2/3.0 WHERE id = 1")
	e.waitGone(append(slices.DeleteFunc(slices.Clone(pinned), func(k string) bool { return strings.HasPrefix(k, "q:") }), newKeys...)...)
	e.fence()
	e.regAssertKeys(append(unpinned, "q:2024-01-02 03:04:05.5+00:0.3333333333333333")...)
}

// Patterns under bump and stale act on the cache entries they match, never
// on the version and stale companions that match too.
func TestRegistryPatternsWithBumpAndStale(t *testing.T) {
	e := newEnv(t, envOptions{extraSchema: regExampleSchema, seed: defaultSeed + "INSERT INTO settings VALUES (1, 'a'), (2, 'b');", deps: `version: 1
tables:
  public.products:
    action: bump
    keys: ["product:{id}"]
    on_truncate:
      patterns: ["product:*"]
  public.settings:
    action: stale
    stale_ttl: 1m
    keys: ["setting:{id}"]
    on_truncate:
      patterns: ["setting:*"]
  public.categories:
    keys: ["category:{id}"]
`})
	for k, v := range map[string]string{"product:1": "p1", "product:2": "p2", "product:1:version": "5",
		"setting:1": "s1", "setting:2": "s2", "setting:3:stale": "old"} {
		if err := e.rdb.Set(e.ctx, k, v, 0).Err(); err != nil {
			t.Fatal(err)
		}
	}

	before := e.regWALLSN()
	e.psql("TRUNCATE products")
	after := e.regWALLSN()
	eventually(t, invalidateTimeout, func() bool { return e.exists("product:2:version") },
		func() string { return "product:2:version not set by the TRUNCATE's pattern" })
	for _, k := range []string{"product:1:version", "product:2:version"} {
		v, _ := e.regGet(k)
		if got := regDecimal(t, v); got.Cmp(before) <= 0 || got.Cmp(after) > 0 {
			t.Errorf("%s = %s, want the TRUNCATE's commit LSN in (%s, %s]", k, got, before, after)
		}
	}

	e.psql("TRUNCATE settings")
	e.waitGone("setting:1", "setting:2")
	e.fence()
	e.regAssertKeys("product:1", "product:2", "product:1:version", "product:2:version", "setting:1:stale", "setting:2:stale", "setting:3:stale")
	for k, want := range map[string]string{"setting:1:stale": "s1", "setting:2:stale": "s2", "setting:3:stale": "old"} {
		if got, _ := e.regGet(k); got != want {
			t.Errorf("%s = %q, want %q", k, got, want)
		}
	}
	if ttl := e.rdb.PTTL(e.ctx, "setting:3:stale").Val(); ttl != -1 {
		t.Errorf("setting:3:stale, a stale companion matched by the pattern, got PTTL %v: it was acted on", ttl)
	}
}

// Lookups run with a statement timeout: one stuck behind a lock fails
// (and the batch waits, unacknowledged) instead of hanging walbust; once
// the lock is gone the keys go.
func TestRegistryLookupStatementTimeout(t *testing.T) {
	e := regExampleEnv(t, `INSERT INTO users VALUES (1, 'alice@example.com', 'alice', NULL);
INSERT INTO team_members VALUES (10, 1);`)
	e.regFence()
	locker, err := pg.Connect(e.ctx, e.name)
	if err != nil {
		t.Fatal(err)
	}
	defer locker.Close(context.Background())
	tx, err := locker.Begin(e.ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(context.Background())
	if _, err := tx.Exec(e.ctx, "LOCK TABLE team_members IN ACCESS EXCLUSIVE MODE"); err != nil {
		t.Fatal(err)
	}

	e.cache("user:1", "team:10:members")
	off := e.regLogOffset()
	e.exec("UPDATE users SET email = 'alice@new.example' WHERE id = 1")
	e.regWaitLog(off, `"level":"error"[^\n]*cannot derive invalidations; batch not acknowledged[^\n]*canceling statement due to statement timeout`, 2*time.Minute)
	e.assertPresent("user:1", "team:10:members")

	if err := tx.Rollback(e.ctx); err != nil {
		t.Fatal(err)
	}
	eventually(t, 2*time.Minute, func() bool { return !e.exists("user:1") && !e.exists("team:10:members") },
		func() string { return "keys still cached after the lock was released" })
}

func regContainsAll(s string, words []string) bool {
	for _, w := range words {
		if !strings.Contains(s, w) {
			return false
		}
	}
	return true
}
