package e2e

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// refreshClusterDeps: two refresh rules on items, the row as the value.
// "{{item:{id}}}" renders "{item:42}", a hash tag, so the key and its LSN
// key "{item:42}:lsn" share a slot and one script compares and sets both;
// "plain:{id}" has none, so "plain:42" and "plain:42:lsn" hash apart and
// walbust removes the key instead of refreshing it.
const refreshClusterDeps = `version: 1
tables:
  public.items:
    derived:
      - keys: ["{{item:{id}}}"]
        action: refresh
        value: row
        ttl: 1h
      - keys: ["plain:{id}"]
        action: refresh
        value: row
        ttl: 1h
`

const (
	refreshClusterCopy = faultSlot + "_replay"
	crossSlotWarning   = "refreshed key and its LSN key hash to different cluster slots"
)

func itemJSON(id, grp, v int, note string) string {
	return fmt.Sprintf(`{"id":"%d","grp":"%d","v":"%d","note":%q}`, id, grp, v, note)
}

// TestRefreshCluster: action refresh on a 3-master Redis Cluster. A key
// with a hash tag is refreshed in place (value and LSN key in one script),
// a key without one is removed (a warning once); a replay of every change
// (walbust restarted on a copy of the slot taken before them, with no
// checkpoint) neither brings back an older value nor a deleted row, and
// DELETE deletes.
func TestRefreshCluster(t *testing.T) {
	cluster := startRedisCluster(t)
	f := newFaultEnv(t, faultOptions{cluster: cluster, deps: refreshClusterDeps})
	p := f.startStreaming("walbust")
	// The replay's slot: a copy taken before any change, so walbust started
	// on it streams all of them again.
	f.exec(`SELECT pg_copy_logical_replication_slot($1, $2)`, faultSlot, refreshClusterCopy)

	// Untagged keys whose LSN key lands in another slot: that is the case
	// under test (with 16384 slots, a coincidence is possible; rule it out).
	for _, k := range []string{"plain:1", "plain:2"} {
		a, b := f.rdb.ClusterKeySlot(f.ctx, k).Val(), f.rdb.ClusterKeySlot(f.ctx, k+":lsn").Val()
		if a == b {
			t.Fatalf("%s and %s:lsn share slot %d; pick other ids", k, k, a)
		}
	}
	for _, k := range []string{"{item:1}", "{item:2}"} {
		if a, b := f.rdb.ClusterKeySlot(f.ctx, k).Val(), f.rdb.ClusterKeySlot(f.ctx, k+":lsn").Val(); a != b {
			t.Fatalf("%s in slot %d, %s:lsn in slot %d: the hash tag does not hold", k, a, k, b)
		}
	}

	get := func(key string) (string, bool) {
		t.Helper()
		var v string
		var err error
		f.redisDo(func(c redis.UniversalClient) error {
			v, err = c.Get(f.ctx, key).Result()
			if err == redis.Nil {
				return nil
			}
			return err
		})
		return v, err == nil
	}
	waitValue := func(key, want string) {
		t.Helper()
		eventually(t, invalidateTimeout, func() bool { v, _ := get(key); return v == want }, func() string {
			v, ok := get(key)
			return fmt.Sprintf("%s = %q (present %v), want %q", key, v, ok, want)
		})
	}
	// lsnOf reads a key's LSN key and checks it is the commit's: after
	// before, at or before after.
	lsnOf := func(key string, before, after uint64) uint64 {
		t.Helper()
		v, ok := get(key + ":lsn")
		if !ok {
			t.Fatalf("%s:lsn missing", key)
		}
		lsn, err := faultParseLSN(v)
		if err != nil || strings.Contains(v, "stale") {
			t.Fatalf("%s:lsn = %q, want a commit LSN (%v)", key, v, err)
		}
		if lsn <= before || lsn > after {
			t.Errorf("%s:lsn = %s, want the commit LSN in (%s, %s]", key, v, faultLSN(before), faultLSN(after))
		}
		return lsn
	}
	absent := func(keys ...string) {
		t.Helper()
		if left := f.present(keys...); len(left) > 0 {
			t.Errorf("present, want absent: %s", strings.Join(left, ", "))
		}
	}

	// INSERT: the tagged key gets the row, with its TTL and LSN; the
	// untagged one is not written (removing a key not cached is a no-op).
	before := f.currentLSN()
	f.exec(`INSERT INTO items (id, grp, note) VALUES (1, 1, 'a')`)
	after := f.currentLSN()
	waitValue("{item:1}", itemJSON(1, 1, 0, "a"))
	inserted := lsnOf("{item:1}", before, after)
	if ttl := f.rdb.PTTL(f.ctx, "{item:1}").Val(); ttl < 50*time.Minute || ttl > 67*time.Minute {
		t.Errorf("{item:1} TTL %v, want 1h ±10%%", ttl)
	}
	f.waitConfirmed(after, invalidateTimeout)
	absent("plain:1", "plain:1:lsn")

	// UPDATE: the tagged key is overwritten in place (never missing in
	// between, as a reader would see it); the untagged key a reader filled
	// is removed, and no LSN key is written for it.
	if err := f.rdb.Set(f.ctx, "plain:1", "reader fill", time.Hour).Err(); err != nil {
		t.Fatal(err)
	}
	before = f.currentLSN()
	f.exec(`UPDATE items SET v = 1, note = 'b' WHERE id = 1`)
	after = f.currentLSN()
	waitValue("{item:1}", itemJSON(1, 1, 1, "b"))
	if updated := lsnOf("{item:1}", before, after); updated <= inserted {
		t.Errorf("{item:1}:lsn %s after the UPDATE, not past the INSERT's %s", faultLSN(updated), faultLSN(inserted))
	}
	f.waitGone(invalidateTimeout, "plain:1")
	absent("plain:1:lsn")

	// DELETE (no negative marker): the key goes, its LSN key records the
	// DELETE, so an older write cannot bring the row back.
	f.exec(`INSERT INTO items (id, grp, note) VALUES (2, 2, 'c')`)
	waitValue("{item:2}", itemJSON(2, 2, 0, "c"))
	f.exec(`UPDATE items SET v = 5 WHERE id = 2`)
	waitValue("{item:2}", itemJSON(2, 2, 5, "c"))
	before = f.currentLSN()
	f.exec(`DELETE FROM items WHERE id = 2`)
	after = f.currentLSN()
	f.waitGone(invalidateTimeout, "{item:2}")
	deleted := lsnOf("{item:2}", before, after)
	f.waitConfirmed(after, invalidateTimeout)
	absent("plain:2", "plain:2:lsn")

	// The fallback was announced, once per process however many keys took it.
	if n := p.count(crossSlotWarning); n != 1 {
		t.Errorf("%d log lines warn that a refreshed key and its LSN key are in different slots, want 1:\n%s", n, faultTail(p.log(), 30))
	}
	// ... and foretold at start, as walbust validate says it: the untagged
	// key's rule, not the tagged one's.
	if n := p.count(`\"plain:{id}\" cannot be refreshed: it has no hash tag`); n != 1 {
		t.Errorf("%d start-up warnings name plain:{id} as not refreshable in cluster mode, want 1:\n%s", n, faultTail(p.log(), 30))
	}
	if n := p.count(`cannot be refreshed: it has no hash tag`); n != 1 {
		t.Errorf("%d start-up warnings about refresh keys without a hash tag, want 1 (only plain:{id}):\n%s", n, faultTail(p.log(), 30))
	}
	if strings.Contains(p.log(), `"level":"error"`) {
		t.Errorf("errors logged:\n%s", faultTail(p.log(), 20))
	}

	// Replay: walbust restarted on the copy of the slot, with no checkpoint,
	// streams every change above again, at their older LSNs. Replayed in
	// order they would end in the same state even if each overwrote the
	// last, so what is checked is that the replay writes nothing at all to
	// the refreshed keys or their LSN keys (keyspace notifications on the
	// masters holding them): each script found a newer or equal LSN and
	// left the value alone. The deleted row stays deleted, and the
	// untagged key a reader filled meanwhile is removed again (which also
	// shows the replay happened).
	if code, took := p.term(30 * time.Second); code != 0 {
		t.Fatalf("walbust exited %d after SIGTERM (%v)", code, took)
	}
	item1, lsn1 := mustGet(t, get, "{item:1}"), mustGet(t, get, "{item:1}:lsn")
	lsn2 := mustGet(t, get, "{item:2}:lsn")
	if err := f.rdb.Set(f.ctx, "plain:1", "reader fill", time.Hour).Err(); err != nil {
		t.Fatal(err)
	}
	end := f.currentLSN()
	writes := watchKeyspace(t, f, "{item:1}", "{item:1}:lsn", "{item:2}", "{item:2}:lsn")
	r := f.startStreaming("replay", "--slot", refreshClusterCopy, "--checkpoint", filepath.Join(f.dir, "replay.checkpoint"))
	f.waitSlotConfirmed(refreshClusterCopy, end, invalidateTimeout)
	if ev := writes(); len(ev) > 0 {
		t.Errorf("the replay of older changes wrote to refreshed keys: %s", strings.Join(ev, "; "))
	}
	absent("plain:1", "plain:1:lsn", "plain:2", "plain:2:lsn", "{item:2}")
	for key, want := range map[string]string{"{item:1}": item1, "{item:1}:lsn": lsn1, "{item:2}:lsn": lsn2} {
		if v, _ := get(key); v != want {
			t.Errorf("after the replay %s = %q, want %q (an older change overwrote a newer one)", key, v, want)
		}
	}
	if got, _ := get("{item:2}:lsn"); got != faultLSN(deleted) {
		t.Errorf("{item:2}:lsn = %q after the replay, want the DELETE's %s", got, faultLSN(deleted))
	}

	// And a new change after the replay still goes through.
	f.exec(`UPDATE items SET v = 2 WHERE id = 1`)
	waitValue("{item:1}", itemJSON(1, 1, 2, "b"))
	f.exec(`DELETE FROM items WHERE id = 1`)
	f.waitGone(invalidateTimeout, "{item:1}")
	if strings.Contains(r.log(), `"level":"error"`) {
		t.Errorf("errors logged by the replay:\n%s", faultTail(r.log(), 20))
	}
}

func mustGet(t *testing.T, get func(string) (string, bool), key string) string {
	t.Helper()
	v, ok := get(key)
	if !ok {
		t.Fatalf("%s missing", key)
	}
	return v
}

// watchKeyspace subscribes to the keyspace notifications of keys on the
// masters holding them; the function it returns reports every event since,
// as "key event". (A marker published on each master's own connection
// comes after every event that master delivered before it.)
func watchKeyspace(t *testing.T, f *faultEnv, keys ...string) func() []string {
	t.Helper()
	cc := f.rdb.(*redis.ClusterClient)
	type watch struct {
		m      *redis.Client
		ps     *redis.PubSub
		marker string
	}
	byAddr := map[string]*watch{}
	var order []*watch
	for _, k := range keys {
		m, err := cc.MasterForKey(f.ctx, k)
		if err != nil {
			t.Fatal(err)
		}
		w := byAddr[m.Options().Addr]
		if w == nil {
			if err := m.ConfigSet(f.ctx, "notify-keyspace-events", "KA").Err(); err != nil {
				t.Fatal(err)
			}
			w = &watch{m: m, marker: "walbust-e2e-marker:" + m.Options().Addr}
			w.ps = m.Subscribe(f.ctx, w.marker)
			t.Cleanup(func() { w.ps.Close() })
			byAddr[m.Options().Addr], order = w, append(order, w)
		}
		if err := w.ps.Subscribe(f.ctx, "__keyspace@0__:"+k); err != nil {
			t.Fatal(err)
		}
	}
	// drain returns the events up to the marker with payload p.
	drain := func(w *watch, p string) []string {
		t.Helper()
		if err := w.m.Publish(f.ctx, w.marker, p).Err(); err != nil {
			t.Fatal(err)
		}
		var events []string
		deadline := time.After(invalidateTimeout)
		for {
			select {
			case msg := <-w.ps.Channel():
				if msg.Channel == w.marker && msg.Payload == p {
					return events
				}
				if k, ok := strings.CutPrefix(msg.Channel, "__keyspace@0__:"); ok {
					events = append(events, k+" "+msg.Payload)
				}
			case <-deadline:
				t.Fatalf("no marker %q from %s within %v", p, w.m.Options().Addr, invalidateTimeout)
			}
		}
	}
	for _, w := range order {
		drain(w, "ready") // subscribed to every channel; nothing before counts
	}
	return func() []string {
		t.Helper()
		var events []string
		for _, w := range order {
			events = append(events, drain(w, "done")...)
		}
		return events
	}
}
