package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"
)

// faultTracker is the checker's model of the cache. Everything that
// happens to a key is stamped with a number from one counter, so "before"
// and "after" are exact, not guesses from clocks:
//
//   - a SET is stamped when it starts and when it has returned;
//   - a write (a committed transaction) is stamped just before COMMIT is
//     sent, and recorded only once Postgres has acknowledged the commit.
//
// A key must be gone once walbust has caught up with a write W touching it
// if every SET of the key had returned before W's COMMIT was sent: W is
// then in the WAL after the cached value was in Redis, so W's invalidation
// removes it, and nothing put it back. A SET still in flight, or one that
// started after W's COMMIT was sent, may legitimately win the race with
// the invalidation (a writer re-caching a key after its own write), so such
// keys are not required to be gone for W.
type faultTracker struct {
	mu    sync.Mutex
	seq   uint64
	epoch int // Redis incarnation: a restart brings it back empty
	keys  map[string]*faultKey

	writes      int // commits acknowledged
	unknown     int // commits whose outcome is unknown (connection lost at COMMIT)
	failures    int // other failed attempts (server down, conflicts)
	sets        int
	setFailures int
}

type faultKey struct {
	setStart    uint64 // the latest SET's start stamp
	setEnd      uint64 // the latest SET's end stamp
	inFlight    int    // SETs started and not returned
	okEpoch     int    // Redis incarnation of the last successful SET; -1 none
	commitStart uint64 // the latest acknowledged write's pre-COMMIT stamp
	write       string // that write, for failure messages
}

func newFaultTracker() *faultTracker {
	return &faultTracker{keys: map[string]*faultKey{}}
}

func (tr *faultTracker) key(k string) *faultKey {
	s := tr.keys[k]
	if s == nil {
		s = &faultKey{okEpoch: -1}
		tr.keys[k] = s
	}
	return s
}

// cache SETs keys as an application filling its cache would, stamping
// each SET. Failures (Redis down) are counted, not fatal: the writer
// carries on, as an application would.
func (tr *faultTracker) cache(ctx context.Context, rdb redis.UniversalClient, value string, keys ...string) {
	for _, k := range keys {
		tr.mu.Lock()
		tr.seq++
		s := tr.key(k)
		s.inFlight++
		s.setStart = tr.seq
		epoch := tr.epoch
		tr.mu.Unlock()

		err := rdb.Set(ctx, k, value, 0).Err()
		if c, ok := rdb.(*redis.ClusterClient); ok && err != nil {
			c.ReloadState(ctx) // a failover moved slots: learn where to
		}

		tr.mu.Lock()
		tr.seq++
		s.inFlight--
		s.setEnd = tr.seq
		tr.sets++
		if err != nil {
			tr.setFailures++
		} else if epoch == tr.epoch {
			s.okEpoch = epoch
		}
		tr.mu.Unlock()
	}
}

// committing stamps a COMMIT about to be sent.
func (tr *faultTracker) committing() uint64 {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	tr.seq++
	return tr.seq
}

// committed records an acknowledged commit stamped start that changed the
// rows behind keys.
func (tr *faultTracker) committed(start uint64, desc string, keys ...string) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	tr.writes++
	for _, k := range keys {
		if s := tr.key(k); start > s.commitStart {
			s.commitStart, s.write = start, desc
		}
	}
}

func (tr *faultTracker) failed(unknownOutcome bool) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	if unknownOutcome {
		tr.unknown++
	} else {
		tr.failures++
	}
}

// redisRestarting is called while Redis is down, before it comes back
// empty: SETs that succeeded before are gone whatever walbust does.
func (tr *faultTracker) redisRestarting() {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	tr.epoch++
}

// faultAudit is a set of keys that must be gone once walbust has caught
// up with the WAL position taken right after the snapshot.
type faultAudit struct {
	at   uint64   // stamp of the snapshot
	keys []string // must be gone
	// live counts the keys whose last SET succeeded in the current Redis
	// incarnation: only for those does "gone" prove an invalidation (the
	// others went with a Redis restart).
	live int
}

// snapshot lists the keys that must be gone once walbust has applied
// every commit acknowledged so far.
func (tr *faultTracker) snapshot() faultAudit {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	tr.seq++
	a := faultAudit{at: tr.seq}
	for k, s := range tr.keys {
		if s.inFlight == 0 && s.commitStart > s.setEnd {
			a.keys = append(a.keys, k)
			if s.okEpoch == tr.epoch {
				a.live++
			}
		}
	}
	sort.Strings(a.keys)
	return a
}

// missed returns a description of every key of a that is still cached
// although no SET of it has started since the snapshot.
func (tr *faultTracker) missed(ctx context.Context, rdb redis.UniversalClient, a faultAudit) ([]string, error) {
	var out []string
	for _, k := range a.keys {
		// EXISTS first, then the stamps: a SET that could explain the key
		// being there has started by the time the stamps are read.
		n, err := rdb.Exists(ctx, k).Result()
		if err != nil {
			return nil, err
		}
		if n == 0 {
			continue
		}
		tr.mu.Lock()
		s := *tr.keys[k]
		tr.mu.Unlock()
		if s.setStart > a.at {
			continue // cached again after the snapshot
		}
		out = append(out, fmt.Sprintf("%s (last SET stamps %d-%d, then write at stamp %d: %s)", k, s.setStart, s.setEnd, s.commitStart, s.write))
	}
	return out, nil
}

func (tr *faultTracker) counts() (writes, unknown, failures, sets, setFailures int) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return tr.writes, tr.unknown, tr.failures, tr.sets, tr.setFailures
}

// faultWriter is one "service": plain SQL through pgx, one row per
// transaction, on the rows it owns (so the old values it reads under FOR
// UPDATE are the ones its change replaces), caching the row's keys before
// each write.
type faultWriter struct {
	e    *faultEnv
	tr   *faultTracker
	name string
	ids  []int64
	rdb  redis.UniversalClient
	rng  *rand.Rand
	conn *pgx.Conn
}

const faultGroups = 8

// startFaultWriters runs n writers over ids 1..rows until the returned stop
// function is called; stop waits for them to finish the write in hand.
func startFaultWriters(e *faultEnv, tr *faultTracker, n, rows int) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for i := range n {
		w := &faultWriter{e: e, tr: tr, name: fmt.Sprintf("w%d", i), rdb: e.redisClient(), rng: rand.New(rand.NewPCG(uint64(i), uint64(time.Now().UnixNano())))}
		for id := i + 1; id <= rows; id += n {
			w.ids = append(w.ids, int64(id))
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			w.run(ctx)
		}()
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			cancel()
			wg.Wait()
		})
	}
}

func (w *faultWriter) run(ctx context.Context) {
	defer w.rdb.Close()
	defer func() {
		if w.conn != nil {
			w.conn.Close(context.Background())
		}
	}()
	for ctx.Err() == nil {
		if w.conn == nil {
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			conn, err := pgx.Connect(cctx, w.e.pg.URL(faultDB))
			cancel()
			if err != nil {
				faultPause(ctx, 200*time.Millisecond) // Postgres is restarting
				continue
			}
			w.conn = conn
		}
		if unknown, err := w.step(); err != nil {
			w.tr.failed(unknown)
			w.conn.Close(context.Background())
			w.conn = nil
		}
		// A modest pace: the machine is shared with Postgres, Redis and
		// walbust, and the point is faults under load, not throughput.
		faultPause(ctx, time.Duration(5+w.rng.IntN(20))*time.Millisecond)
	}
}

// step makes one write. The write runs to completion even when the test
// asks the writers to stop, so that afterwards nothing is in flight.
func (w *faultWriter) step() (unknownOutcome bool, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	id := w.ids[w.rng.IntN(len(w.ids))]
	tx, err := w.conn.Begin(ctx)
	if err != nil {
		return false, err
	}
	defer tx.Rollback(context.Background()) //nolint:errcheck // after Commit it is a no-op
	var oldGrp int
	exists := true
	if err := tx.QueryRow(ctx, `SELECT grp FROM items WHERE id = $1 FOR UPDATE`, id).Scan(&oldGrp); errors.Is(err, pgx.ErrNoRows) {
		exists = false
	} else if err != nil {
		return false, err
	}
	newGrp := w.rng.IntN(faultGroups)
	note := strings.Repeat("x", w.rng.IntN(64))
	var op, sql string
	var args []any
	var keys []string
	switch {
	case !exists:
		op, sql, args = "insert", `INSERT INTO items (id, grp, note) VALUES ($1, $2, $3) RETURNING txid_current()`, []any{id, newGrp, note}
		keys = w.e.itemKeys(id, newGrp)
	case w.rng.IntN(100) < 15:
		op, sql, args = "delete", `DELETE FROM items WHERE id = $1 RETURNING txid_current()`, []any{id}
		keys, newGrp = w.e.itemKeys(id, oldGrp), -1
	default:
		if w.rng.IntN(2) == 0 {
			newGrp = oldGrp
		}
		op, sql, args = "update", `UPDATE items SET grp = $2, v = v + 1, note = $3 WHERE id = $1 RETURNING txid_current()`, []any{id, newGrp, note}
		keys = append(w.e.itemKeys(id, oldGrp), w.e.itemKeys(id, newGrp)[1:]...)
	}
	slices.Sort(keys)
	keys = slices.Compact(keys)
	// The cache fill of the old value (or, before an INSERT, of "no such
	// row"): it reaches Redis before the write commits.
	value := "old"
	if !exists {
		value = "nil"
	}
	w.tr.cache(ctx, w.rdb, value, keys...)
	var xid int64
	if err := tx.QueryRow(ctx, sql, args...).Scan(&xid); err != nil {
		return false, err
	}
	start := w.tr.committing()
	if err := tx.Commit(ctx); err != nil {
		return true, err
	}
	w.tr.committed(start, fmt.Sprintf("%s %s id=%d grp %d->%d xid=%d", w.name, op, id, oldGrp, newGrp, xid), keys...)
	return false, nil
}

// faultPause sleeps for d or until ctx ends.
func faultPause(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// faultLogStats is what the walbust logs say happened.
type faultLogStats struct {
	batches         int // "applied" lines: batches acknowledged by Redis and checkpointed
	txs             int // transactions in them (heartbeats included)
	replayedBatches int // batches wholly at or below what had been applied before: replays
	replayedTxs     int // transactions in those batches
	connects        int // "streaming": replication sessions started
	interruptions   int // "replication interrupted; reconnecting"
	slotBusy        int // of those, 'replication slot ... is active for PID'
	redisRetries    int // "redis unavailable; retrying batch" (rate-limited)
	overflows       int // "transaction exceeded max_tx_changes"
	incomplete      int // "invalidation incomplete": must stay 0
	resyncs         int // "resync complete"
	// causes counts the interruptions by error, digits blanked out.
	causes map[string]int
}

var faultDigits = regexp.MustCompile(`[0-9]+`)

// analyzeFaultLogs reads every walbust log of the test in time order.
//
// Replays: walbust applies transactions in commit order and logs each
// acknowledged batch with the end LSN of its last transaction. A batch
// whose end LSN is at or below the highest end LSN any earlier batch (of
// any process) reached holds only transactions that had been applied
// already: it is a replay, the at-least-once half of the guarantee at work
// after a crash, a lost connection or a failover. Batches that mix old and
// new transactions are not counted, so these numbers are lower bounds.
func analyzeFaultLogs(procs []*faultProc) (faultLogStats, error) {
	type applied struct {
		ts  time.Time
		end uint64
		txs int
	}
	st := faultLogStats{causes: map[string]int{}}
	var events []applied
	for _, p := range procs {
		f, err := os.Open(p.logPath)
		if err != nil {
			return st, err
		}
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 1<<20), 16<<20)
		for sc.Scan() {
			line := sc.Text()
			var rec struct {
				TS     string `json:"ts"`
				Msg    string `json:"msg"`
				EndLSN string `json:"end_lsn"`
				Txs    int    `json:"txs"`
				Error  string `json:"error"`
			}
			if json.Unmarshal([]byte(line), &rec) != nil {
				continue // not a log line (walbust's last words on stderr)
			}
			switch rec.Msg {
			case "applied":
				ts, err := time.Parse("2006-01-02T15:04:05.000Z0700", rec.TS)
				if err != nil {
					f.Close()
					return st, fmt.Errorf("%s: timestamp %q: %w", p.name, rec.TS, err)
				}
				end, err := faultParseLSN(rec.EndLSN)
				if err != nil {
					f.Close()
					return st, fmt.Errorf("%s: %w", p.name, err)
				}
				events = append(events, applied{ts: ts, end: end, txs: rec.Txs})
			case "streaming":
				st.connects++
			case "replication interrupted; reconnecting":
				st.interruptions++
				st.causes[faultDigits.ReplaceAllString(rec.Error, "N")]++
				if strings.Contains(rec.Error, "is active for PID") {
					st.slotBusy++
				}
			case "redis unavailable; retrying batch":
				st.redisRetries++
			case "invalidation incomplete":
				st.incomplete++
			case "resync complete":
				st.resyncs++
			}
			if strings.HasPrefix(rec.Msg, "transaction exceeded max_tx_changes") {
				st.overflows++
			}
		}
		err = sc.Err()
		f.Close()
		if err != nil {
			return st, fmt.Errorf("%s: %w", p.name, err)
		}
	}
	// Processes never apply at the same time (the slot admits one
	// consumer), so timestamps order them; within a log, lines are in order.
	sort.SliceStable(events, func(i, j int) bool { return events[i].ts.Before(events[j].ts) })
	var high uint64
	for _, ev := range events {
		st.batches++
		st.txs += ev.txs
		if ev.end <= high {
			st.replayedBatches++
			st.replayedTxs += ev.txs
		}
		high = max(high, ev.end)
	}
	return st, nil
}
