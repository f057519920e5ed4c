package e2e

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"strings"
	"testing"
	"time"
)

var faultSoak = flag.Bool("soak", false, "run TestFaultSuite as a long soak (also WALBUST_SOAK=1)")

const (
	streamingMsg  = `"msg":"streaming"`
	redisRetryMsg = `"msg":"redis unavailable; retrying batch"`
)

// faultPostgres: streaming of in-progress transactions past 64kB (so the
// million-row transaction arrives while it runs), synchronous commits (a
// crash must not lose a commit a writer was told about; see
// throwaway.Postgres.Kill), and a walsender that gives up on a silent
// client after 10s instead of 60s (the partition fault).
var faultPostgres = map[string]string{
	"logical_decoding_work_mem": "64kB",
	"synchronous_commit":        "on",
	"wal_sender_timeout":        "10s",
}

// TestFaultSuite runs a write workload while it crashes, partitions and
// restarts everything walbust depends on, and walbust itself, and then
// proves that no invalidation was missed.
//
// Writers ("services": plain SQL through pgx, nothing of walbust) update,
// insert and delete rows, caching each row's keys just before the write,
// as a read path filling the cache with the old value would. Meanwhile,
// on a schedule: kill -9 walbust (three times, restarting it), cut its
// connections to Postgres at a TCP proxy, stop Redis and bring it back
// empty, terminate the walsender, crash Postgres (immediate shutdown) and
// restart it, run a million-row UPDATE (past max_tx_changes, so it falls
// back to on_truncate patterns), fail over to a standby walbust waiting on
// the slot, and partition the connections (the proxy stops forwarding
// without closing anything).
//
// After each fault, and at the end with the writers stopped, the test
// waits for the slot to confirm the WAL position of that moment and checks
// every key that had to be gone (see faultTracker): zero misses allowed.
func TestFaultSuite(t *testing.T) {
	rounds, pace := 1, 3*time.Second
	if *faultSoak || os.Getenv("WALBUST_SOAK") == "1" {
		rounds, pace = 6, 15*time.Second
	}
	const rows, bulkRows, writers = 160, 1_000_000, 4
	e := newFaultEnv(t, faultOptions{
		pgSettings: faultPostgres, proxy: true, items: rows + 1, bulkRows: bulkRows,
		// Far below the million-row transaction, far above the writers'.
		config: "max_tx_changes: 10000\n",
	})
	tr := newFaultTracker()
	f := &faultRun{t: t, e: e, tr: tr, pace: pace, spare: rows + 1, faults: map[string]int{}, distinct: map[string]bool{}}
	f.active = e.startStreaming(f.nextName())
	stopWriters := startFaultWriters(e, tr, writers, rows)
	t.Cleanup(stopWriters) // before the servers go, if the test fails early

	for round := 1; round <= rounds; round++ {
		t.Logf("round %d of %d", round, rounds)
		f.pause()
		f.killWalbust()
		f.pause()
		f.cutConnections()
		f.pause()
		f.restartRedis()
		f.pause()
		f.killWalbust()
		f.pause()
		f.terminateWalsender()
		f.pause()
		f.crashPostgres()
		f.pause()
		f.hugeTransaction(bulkRows)
		f.pause()
		f.failover()
		f.pause()
		f.killWalbust()
		f.pause()
		f.partition()
		f.pause()
	}

	stopWriters()
	// The final audit waits until the slot confirms the WAL insert position
	// as of now: every acknowledged commit has then been applied.
	f.audit("writers stopped")

	procs := e.allProcs()
	st, err := analyzeFaultLogs(procs)
	if err != nil {
		t.Fatal(err)
	}
	writes, unknown, failures, sets, setFailures := tr.counts()
	var injected int
	var kinds []string
	for k, n := range f.faults {
		injected += n
		kinds = append(kinds, fmt.Sprintf("%s ×%d", k, n))
	}
	sort.Strings(kinds)
	var streamTxns, streamBytes int64
	e.query(`SELECT coalesce(sum(stream_txns), 0), coalesce(sum(stream_bytes), 0) FROM pg_stat_replication_slots`, nil, &streamTxns, &streamBytes)

	t.Logf("writes: %d acknowledged, %d with unknown outcome (connection lost at COMMIT), %d failed attempts; cache fills: %d (%d failed while Redis was down)",
		writes, unknown, failures, sets, setFailures)
	t.Logf("keys checked: %d checks in %d audits, %d distinct keys, %d checks on keys cached in the Redis of the moment; missed invalidations: %d",
		f.checks, f.audits, len(f.distinct), f.live, f.missedTotal)
	t.Logf("faults injected: %d (%s); failover takeover after %v", injected, strings.Join(kinds, ", "), f.takeovers)
	t.Logf("replays observed: %d batches, %d transactions (of %d batches, %d transactions applied, heartbeats included)",
		st.replayedBatches, st.replayedTxs, st.batches, st.txs)
	t.Logf("walbust: %d processes, %d replication sessions, %d interruptions (%d while another walsender held the slot), %d Redis retry warnings, %d overflowed transactions; Postgres streamed %d in-progress transactions (%d bytes) since its last crash",
		len(procs), st.connects, st.interruptions, st.slotBusy, st.redisRetries, st.overflows, streamTxns, streamBytes)
	for cause, n := range st.causes {
		t.Logf("  interrupted %d× by: %s", n, cause)
	}

	if f.missedTotal > 0 {
		t.Errorf("%d missed invalidations (listed above)", f.missedTotal)
	}
	if f.live == 0 {
		t.Error("no audit checked a key cached in the live Redis: the suite proved nothing")
	}
	if st.overflows == 0 {
		t.Error("the million-row transaction did not exceed max_tx_changes (no overflow warning in any log)")
	}
	if streamTxns == 0 {
		t.Error("Postgres streamed no in-progress transaction: logical_decoding_work_mem=64kB should have made it stream the million-row one")
	}
	if st.incomplete > 0 {
		t.Errorf("%d \"invalidation incomplete\" errors in the logs", st.incomplete)
	}
	if code, took := f.active.term(faultStopBound); code != 0 {
		t.Errorf("%s: exit code %d %v after SIGTERM, want 0", f.active.name, code, took)
	}
}

// faultStopBound is how long a SIGTERM may take with Redis available.
const faultStopBound = 15 * time.Second

// faultRun is TestFaultSuite's schedule and bookkeeping.
type faultRun struct {
	t      *testing.T
	e      *faultEnv
	tr     *faultTracker
	pace   time.Duration
	active *faultProc // the walbust that holds, or will hold, the slot
	n      int        // walbust processes started
	spare  int64      // a row no writer owns

	faults      map[string]int
	takeovers   []time.Duration
	audits      int
	checks      int // keys checked, summed over audits
	live        int // of those, keys cached in the Redis of the moment
	distinct    map[string]bool
	missedTotal int
}

func (f *faultRun) nextName() string {
	f.n++
	return fmt.Sprintf("walbust-%d", f.n)
}

// pause lets the writers run between faults (the schedule's pacing).
func (f *faultRun) pause() {
	f.t.Helper()
	deadline := time.Now().Add(f.pace)
	for time.Now().Before(deadline) {
		f.e.assertAlive()
		time.Sleep(100 * time.Millisecond)
	}
}

// injected counts a fault and audits the cache once walbust has caught up
// with everything committed before it.
func (f *faultRun) injected(fault string) {
	f.t.Helper()
	f.faults[fault]++
	f.audit(fault)
}

// awaitReconnect waits for the active walbust to start a new replication
// session: it noticed the fault and recovered.
func (f *faultRun) awaitReconnect(sessionsBefore int) {
	f.t.Helper()
	f.e.waitLog(f.active, streamingMsg, sessionsBefore+1, faultRecoverTimeout)
}

// audit checks, once the slot has confirmed the current WAL position,
// every key that had to be gone at the moment of the call.
func (f *faultRun) audit(after string) {
	f.t.Helper()
	a := f.tr.snapshot()
	lsn := f.e.currentLSN()
	took := f.e.waitConfirmed(lsn, faultCatchUpTimeout)
	rdb := f.e.redisClient()
	defer rdb.Close()
	ctx, cancel := context.WithTimeout(f.e.ctx, time.Minute)
	defer cancel()
	missed, err := f.tr.missed(ctx, rdb, a)
	if err != nil {
		f.t.Fatalf("audit after %s: %v", after, err)
	}
	f.audits++
	f.checks += len(a.keys)
	f.live += a.live
	for _, k := range a.keys {
		f.distinct[k] = true
	}
	f.missedTotal += len(missed)
	f.t.Logf("after %s: slot confirmed %s in %v; %d keys had to be gone (%d cached in the current Redis): %d missed",
		after, faultLSN(lsn), took.Round(time.Millisecond), len(a.keys), a.live, len(missed))
	if len(missed) > 0 {
		f.t.Errorf("after %s: %d keys still cached although a committed write changed their row after they were cached:\n%s",
			after, len(missed), strings.Join(missed, "\n"))
	}
}

func (f *faultRun) killWalbust() {
	f.t.Helper()
	f.active.kill()
	f.active = f.e.startStreaming(f.nextName())
	f.injected("kill -9 walbust")
}

func (f *faultRun) cutConnections() {
	f.t.Helper()
	before := f.active.count(streamingMsg)
	if n := f.e.proxy.Cut(); n == 0 {
		f.t.Fatal("cut: walbust had no connection through the proxy")
	}
	f.awaitReconnect(before)
	f.injected("cut connections at the proxy")
}

func (f *faultRun) partition() {
	f.t.Helper()
	before := f.active.count(streamingMsg)
	if n := f.e.proxy.Freeze(); n == 0 {
		f.t.Fatal("partition: walbust had no connection through the proxy")
	}
	// walbust gives up on the silent connection after 3 × status_interval;
	// the walsender, which heard nothing either, holds the slot until
	// wal_sender_timeout, so walbust first sees "slot is active".
	f.awaitReconnect(before)
	f.injected("partition (half-open connections)")
}

func (f *faultRun) restartRedis() {
	f.t.Helper()
	before := f.active.count(redisRetryMsg)
	if err := f.e.rds.Stop(); err != nil {
		f.t.Fatal(err)
	}
	f.tr.redisRestarting()
	// A write walbust must apply while Redis is down (the writers, slowed
	// by failing cache fills, may commit few): it retries the batch.
	start := f.tr.committing()
	f.e.exec(`UPDATE items SET v = v + 1 WHERE id = $1`, f.spare)
	f.tr.committed(start, fmt.Sprintf("update of id=%d during the Redis outage", f.spare), faultItemKeys(f.spare, int(f.spare%8))...)
	f.e.waitLog(f.active, redisRetryMsg, before+1, invalidateTimeout)
	ctx, cancel := context.WithTimeout(f.e.ctx, time.Minute)
	defer cancel()
	if err := f.e.rds.Restart(ctx); err != nil {
		f.t.Fatal(err)
	}
	f.injected("redis-server stopped, restarted empty")
}

func (f *faultRun) terminateWalsender() {
	f.t.Helper()
	deadline := time.Now().Add(faultRecoverTimeout)
	for {
		s, err := f.e.slot()
		if err == nil && s.active {
			break
		}
		if time.Now().After(deadline) {
			f.t.Fatalf("slot not active within %v (err %v)", faultRecoverTimeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	before := f.active.count(streamingMsg)
	var terminated bool
	f.e.query(`SELECT coalesce(bool_or(pg_terminate_backend(active_pid)), false) FROM pg_replication_slots WHERE slot_name = $1 AND active_pid IS NOT NULL`,
		[]any{faultSlot}, &terminated)
	if !terminated {
		f.t.Fatal("pg_terminate_backend did not terminate the walsender")
	}
	f.awaitReconnect(before)
	f.injected("pg_terminate_backend(walsender)")
}

func (f *faultRun) crashPostgres() {
	f.t.Helper()
	before := f.active.count(streamingMsg)
	if err := f.e.pg.Kill(); err != nil {
		f.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(f.e.ctx, 2*time.Minute)
	defer cancel()
	if err := f.e.pg.Restart(ctx); err != nil {
		f.t.Fatal(err)
	}
	f.awaitReconnect(before)
	f.injected("postgres immediate shutdown + restart")
}

// hugeTransaction updates every row of bulk in one transaction, with some
// of their keys cached before it.
func (f *faultRun) hugeTransaction(rows int) {
	f.t.Helper()
	var keys []string
	for i := 1; i <= 50; i++ {
		keys = append(keys, fmt.Sprintf("bulk:%d", i*(rows/50)))
	}
	rdb := f.e.redisClient()
	defer rdb.Close()
	f.tr.cache(f.e.ctx, rdb, "old", keys...)
	start := f.tr.committing()
	begin := time.Now()
	if err := f.e.tryQuery(5*time.Minute, `UPDATE bulk SET v = v + 1`, nil); err != nil {
		f.t.Fatalf("million-row update: %v", err)
	}
	f.tr.committed(start, fmt.Sprintf("UPDATE bulk SET v = v + 1 (%d rows)", rows), keys...)
	f.t.Logf("%d-row UPDATE committed in %v", rows, time.Since(begin).Round(time.Millisecond))
	f.injected(fmt.Sprintf("%d-row UPDATE", rows))
}

// failover starts a second walbust with the same config, which must wait
// for the slot, then kills the active one: the standby takes over.
func (f *faultRun) failover() {
	f.t.Helper()
	standby := f.e.start(f.nextName())
	f.e.waitLog(standby, "is active for PID", 1, faultRecoverTimeout)
	killed := time.Now()
	f.active.kill()
	f.e.waitLog(standby, streamingMsg, 1, faultRecoverTimeout)
	f.takeovers = append(f.takeovers, time.Since(killed).Round(time.Millisecond))
	f.active = standby
	f.injected("failover to a standby (kill -9 of the active)")
}

// TestSlotLossFail: the slot was dropped while walbust was stopped, and
// its checkpoint says it streamed from it. With on_slot_loss: fail (the
// default), `walbust run` must refuse to start, say what happened and what
// to do, and leave the slot alone.
func TestSlotLossFail(t *testing.T) {
	e := newFaultEnv(t, faultOptions{items: 10})
	e.streamThenStop()
	e.exec(`SELECT pg_drop_replication_slot($1)`, faultSlot)

	out, code := e.oneShot(time.Minute, "run")
	if code == 0 {
		t.Fatalf("walbust run exited 0 without its slot:\n%s", out)
	}
	msg := lastLine(out)
	for _, want := range []string{faultSlot, "does not exist", "on_slot_loss", "resync", "walbust setup"} {
		if !strings.Contains(msg, want) {
			t.Errorf("the exit message does not mention %q:\n%s", want, msg)
		}
	}
	t.Logf("exit code %d, message:\n%s", code, msg)
	if s, err := e.slot(); err != nil || s.exists {
		t.Errorf("slot %s recreated by a walbust told to fail (err %v)", faultSlot, err)
	}
}

// TestSlotLossResync: the same loss with on_slot_loss: resync. walbust
// recreates the slot, applies every table's on_truncate rules (the gap is
// unknowable: a write made in it, and caches filled in it, are gone) and
// keeps streaming.
func TestSlotLossResync(t *testing.T) {
	e := newFaultEnv(t, faultOptions{items: 10, config: "on_slot_loss: resync\n"})
	before := e.streamThenStop()
	e.exec(`SELECT pg_drop_replication_slot($1)`, faultSlot)
	e.resyncs(before)
}

// TestSlotLossWALRemoved: a real invalidation. max_slot_wal_keep_size is
// tiny, and while walbust is stopped the WAL it needs is recycled, so the
// slot's wal_status becomes "lost". Without resync walbust refuses to run;
// with it, it recreates the slot and invalidates everything.
func TestSlotLossWALRemoved(t *testing.T) {
	e := newFaultEnv(t, faultOptions{items: 10, pgSettings: map[string]string{"max_slot_wal_keep_size": "1MB"}})
	before := e.streamThenStop()
	deadline := time.Now().Add(time.Minute)
	for {
		for range 4 {
			e.exec(`INSERT INTO filler (pad) SELECT repeat('x', 1000) FROM generate_series(1, 5000)`)
			e.exec(`SELECT pg_switch_wal()`)
		}
		e.exec(`CHECKPOINT`)
		s, err := e.slot()
		if err != nil {
			t.Fatal(err)
		}
		if s.walStatus == "lost" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("slot wal_status is %q, not lost, after a minute of WAL switches and checkpoints", s.walStatus)
		}
	}

	out, code := e.oneShot(time.Minute, "run")
	if code == 0 {
		t.Fatalf("walbust run exited 0 with a lost slot:\n%s", out)
	}
	msg := lastLine(out)
	for _, want := range []string{faultSlot, "wal_status=lost", "on_slot_loss", "resync"} {
		if !strings.Contains(msg, want) {
			t.Errorf("the exit message does not mention %q:\n%s", want, msg)
		}
	}
	t.Logf("exit code %d, message:\n%s", code, msg)

	e.resyncs(before, "--on-slot-loss", "resync")
	if s, err := e.slot(); err != nil || s.walStatus == "lost" {
		t.Errorf("after resync: slot %+v, err %v", s, err)
	}
}

// streamThenStop runs walbust until it has applied a write, stops it and
// returns the checkpoint it saved.
func (e *faultEnv) streamThenStop() uint64 {
	e.t.Helper()
	p := e.startStreaming("walbust-1")
	keys := faultItemKeys(1, 1)
	e.cache(keys...)
	e.exec(`UPDATE items SET v = v + 1 WHERE id = 1`)
	e.waitGone(invalidateTimeout, keys...)
	if code, took := p.term(faultStopBound); code != 0 {
		e.t.Fatalf("walbust run: exit code %d %v after SIGTERM", code, took)
	}
	e.waitSlotInactive(30 * time.Second)
	cp := e.checkpointLSN()
	if cp == 0 {
		e.t.Fatal("no checkpoint after an applied write")
	}
	return cp
}

// resyncs starts walbust after the slot was lost and checks the resync.
func (e *faultEnv) resyncs(checkpointBefore uint64, args ...string) {
	e.t.Helper()
	// A write while no slot records anything, and caches filled around it:
	// nothing can say which keys are stale now.
	e.exec(`UPDATE items SET grp = 5 WHERE id = 2`)
	stale := []string{"item:2", "grp:2:items", "grp:5:count", "item:3", "grp:7:items"}
	unrelated := []string{"session:abc", "other:item:2"}
	e.cache(append(stale, unrelated...)...)

	p := e.startStreaming("walbust-2", args...)
	// The resync is done before streaming starts.
	if left := e.present(stale...); len(left) > 0 {
		e.t.Errorf("resync left keys covered by on_truncate patterns: %v", left)
	}
	if left := e.present(unrelated...); len(left) != len(unrelated) {
		e.t.Errorf("resync removed keys no pattern covers: only %v of %v left", left, unrelated)
	}
	if n := p.count(`"msg":"resync complete"`); n != 1 {
		e.t.Errorf("%d \"resync complete\" lines, want 1", n)
	}
	if !strings.Contains(p.log(), `replication slot lost; resyncing`) {
		e.t.Error("the resync was not logged as an error")
	}
	if s, err := e.slot(); err != nil || !s.exists {
		e.t.Fatalf("slot %s not recreated (err %v)", faultSlot, err)
	}
	if cp := e.checkpointLSN(); cp <= checkpointBefore {
		e.t.Errorf("checkpoint %s not moved past the old one %s by the resync", faultLSN(cp), faultLSN(checkpointBefore))
	}
	if v, err := faultMetric(p, "walbust_slot_resyncs_total"); err != nil || v != 1 {
		e.t.Errorf("walbust_slot_resyncs_total = %v (err %v), want 1", v, err)
	}
	// And it streams on the new slot.
	keys := faultItemKeys(4, 4)
	e.cache(keys...)
	e.exec(`UPDATE items SET v = v + 1 WHERE id = 4`)
	e.waitGone(invalidateTimeout, keys...)
	if code, took := p.term(faultStopBound); code != 0 {
		e.t.Errorf("exit code %d %v after SIGTERM, want 0", code, took)
	}
}

// lastLine is the last non-empty line of a command's output: walbust's
// error message.
func lastLine(out string) string {
	lines := strings.Split(strings.TrimSpace(out), "\n")
	// The error may span lines; it starts at "walbust: ".
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.HasPrefix(lines[i], "walbust: ") {
			return strings.Join(lines[i:], "\n")
		}
	}
	return lines[len(lines)-1]
}

// faultMetric reads one sample from the daemon's /metrics.
func faultMetric(p *faultProc, name string) (float64, error) {
	var addr string
	for _, line := range strings.Split(p.log(), "\n") {
		var rec struct {
			Msg  string `json:"msg"`
			Addr string `json:"addr"`
		}
		if json.Unmarshal([]byte(line), &rec) == nil && rec.Msg == "serving metrics" {
			addr = rec.Addr
		}
	}
	if addr == "" {
		return 0, fmt.Errorf("%s did not log its metrics address", p.name)
	}
	client := &http.Client{Timeout: 5 * time.Second}
	resp, err := client.Get("http://" + addr + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(body), "\n") {
		if rest, ok := strings.CutPrefix(line, name+" "); ok {
			var v float64
			_, err := fmt.Sscan(rest, &v)
			return v, err
		}
	}
	return 0, fmt.Errorf("no sample %s", name)
}

// TestHugeTransactionBoundedMemory: a million-row UPDATE, streamed by
// Postgres while it runs, with max_tx_changes at its default: walbust keeps
// at most that many changes, falls back to the table's on_truncate
// patterns, and its peak RSS stays under 200 MB.
func TestHugeTransactionBoundedMemory(t *testing.T) {
	const rows, limit = 1_000_000, 200 << 20
	e := newFaultEnv(t, faultOptions{items: 10, bulkRows: rows,
		pgSettings: map[string]string{"logical_decoding_work_mem": "64kB"},
		config:     "max_tx_changes: 100000\n"}) // the default, said out loud
	p := e.startStreaming("walbust-1")
	idle, err := p.vmHWM()
	if err != nil {
		t.Fatal(err)
	}
	bulkKeys := []string{"bulk:1", "bulk:250000", "bulk:500000", "bulk:999999", "bulk:1000000", "bulk:2000000"}
	unrelated := faultItemKeys(1, 1)
	e.cache(append(bulkKeys, unrelated...)...)

	begin := time.Now()
	lsn := e.preCommitLSN(`UPDATE bulk SET v = v + 1`)
	committed := time.Since(begin)
	e.waitGone(faultCatchUpTimeout, bulkKeys...)
	gone := time.Since(begin)
	e.waitConfirmed(lsn, faultCatchUpTimeout)
	peak, err := p.vmHWM()
	if err != nil {
		t.Fatal(err)
	}
	var streamTxns, streamBytes int64
	e.query(`SELECT stream_txns, stream_bytes FROM pg_stat_replication_slots WHERE slot_name = $1`, []any{faultSlot}, &streamTxns, &streamBytes)
	t.Logf("%d-row UPDATE: committed after %v, keys gone after %v; walbust peak RSS (VmHWM) %.1f MB (%.1f MB before); Postgres streamed %d in-progress transaction(s), %d bytes",
		rows, committed.Round(time.Millisecond), gone.Round(time.Millisecond), float64(peak)/(1<<20), float64(idle)/(1<<20), streamTxns, streamBytes)
	if peak >= limit {
		t.Errorf("peak RSS %.1f MB, want < %d MB", float64(peak)/(1<<20), limit>>20)
	}
	if streamTxns == 0 {
		t.Error("Postgres did not stream the transaction while it ran (stream_txns = 0)")
	}
	if !strings.Contains(p.log(), "transaction exceeded max_tx_changes") {
		t.Error("no \"transaction exceeded max_tx_changes\" warning")
	}
	if left := e.present(unrelated...); len(left) != len(unrelated) {
		t.Errorf("keys of another table went too: only %v of %v left", left, unrelated)
	}
	// Still streaming row by row afterwards.
	keys := faultItemKeys(2, 2)
	e.cache(keys...)
	e.exec(`UPDATE items SET v = v + 1 WHERE id = 2`)
	e.waitGone(invalidateTimeout, keys...)
	if code, took := p.term(faultStopBound); code != 0 {
		t.Errorf("exit code %d %v after SIGTERM, want 0", code, took)
	}
}

// TestShutdownTiming: SIGTERM finishes the batch in flight, saves the
// checkpoint, confirms it to Postgres and exits 0 promptly; with Redis
// down mid-batch it gives up after shutdown_timeout (the batch is replayed
// next time) and still exits promptly.
func TestShutdownTiming(t *testing.T) {
	// Writers (the "under load" part) own ids 1..rows; the other parts
	// write rows above that, whose grp is still the seeded id % 8.
	const rows = 40
	e := newFaultEnv(t, faultOptions{items: rows + 10})

	t.Run("idle", func(t *testing.T) {
		p := e.startStreaming("walbust-idle")
		keys := faultItemKeys(rows+1, (rows+1)%8)
		e.cache(keys...)
		pre := e.preCommitLSN(`UPDATE items SET v = v + 1 WHERE id = $1`, rows+1)
		e.waitGone(invalidateTimeout, keys...)
		code, took := p.term(faultStopBound)
		t.Logf("SIGTERM → exit %d in %v", code, took.Round(time.Millisecond))
		if code != 0 || took > 10*time.Second {
			t.Errorf("exit code %d after %v, want 0 within 10s", code, took)
		}
		e.checkStopped(p, pre)
	})

	t.Run("under load", func(t *testing.T) {
		tr := newFaultTracker()
		p := e.startStreaming("walbust-load")
		stop := startFaultWriters(e, tr, 2, rows)
		defer stop()
		time.Sleep(3 * time.Second) // writes flowing
		code, took := p.term(faultStopBound)
		t.Logf("SIGTERM under load → exit %d in %v", code, took.Round(time.Millisecond))
		if code != 0 || took > 10*time.Second {
			t.Errorf("exit code %d after %v, want 0 within 10s", code, took)
		}
		e.checkStopped(p, 0)
		stop()
		// What was committed while it stopped is applied by the next run.
		p2 := e.startStreaming("walbust-load-2")
		a := tr.snapshot()
		e.waitConfirmed(e.currentLSN(), faultCatchUpTimeout)
		missed, err := tr.missed(e.ctx, e.rdb, a)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("after the restart: %d keys had to be gone, %d missed", len(a.keys), len(missed))
		if len(missed) > 0 {
			t.Errorf("missed invalidations:\n%s", strings.Join(missed, "\n"))
		}
		if code, took := p2.term(faultStopBound); code != 0 {
			t.Errorf("exit code %d %v after SIGTERM, want 0", code, took)
		}
	})

	t.Run("redis down", func(t *testing.T) {
		const grace = 3 * time.Second
		// No heartbeats: nothing but the stuck write may reach the stream.
		p := e.startStreaming("walbust-redis-down", "--shutdown-timeout", grace.String(), "--heartbeat-interval", "0s")
		e.waitConfirmed(e.currentLSN(), faultCatchUpTimeout)
		cpBefore := e.checkpointLSN()
		if err := e.rds.Stop(); err != nil {
			t.Fatal(err)
		}
		pre := e.preCommitLSN(`UPDATE items SET v = v + 1 WHERE id = $1`, rows+3)
		e.waitLog(p, `"msg":"redis unavailable; retrying batch"`, 1, invalidateTimeout)
		code, took := p.term(grace + 30*time.Second)
		t.Logf("SIGTERM with Redis down mid-batch → exit %d in %v (shutdown_timeout %v)", code, took.Round(time.Millisecond), grace)
		if code != 0 || took > grace+7*time.Second {
			t.Errorf("exit code %d after %v, want 0 within shutdown_timeout %v + 7s", code, took, grace)
		}
		if !strings.Contains(p.log(), "shutdown grace period over") {
			t.Error("no log line saying the batch in flight was abandoned")
		}
		if cp := e.checkpointLSN(); cp > pre || cp < cpBefore {
			t.Errorf("checkpoint %s after an abandoned batch: want between %s and %s (the unapplied write)", faultLSN(cp), faultLSN(cpBefore), faultLSN(pre))
		}
		// Redis is back, empty, and a reader caches the old row again. The
		// write was never acknowledged, so the next run replays it.
		ctx, cancel := context.WithTimeout(e.ctx, time.Minute)
		defer cancel()
		if err := e.rds.Restart(ctx); err != nil {
			t.Fatal(err)
		}
		keys := faultItemKeys(rows+3, (rows+3)%8)
		e.cache(keys...)
		p2 := e.startStreaming("walbust-redis-back")
		e.waitGone(invalidateTimeout, keys...)
		if code, took := p2.term(faultStopBound); code != 0 {
			t.Errorf("exit code %d %v after SIGTERM, want 0", code, took)
		}
	})
}

// checkStopped checks what a clean stop leaves: a "stopped" line, a
// checkpoint past pre (if given), and the slot released having confirmed
// at least the checkpoint.
func (e *faultEnv) checkStopped(p *faultProc, pre uint64) {
	e.t.Helper()
	if p.count(`"msg":"stopped"`) != 1 {
		e.t.Error("no \"stopped\" log line")
	}
	cp := e.checkpointLSN()
	if cp <= pre {
		e.t.Errorf("checkpoint %s does not cover the write applied before SIGTERM (its commit is after %s)", faultLSN(cp), faultLSN(pre))
	}
	e.waitSlotInactive(30 * time.Second)
	s, err := e.slot()
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Logf("checkpoint %s, slot confirmed %s", faultLSN(cp), faultLSN(s.confirmed))
	if s.confirmed < cp {
		e.t.Errorf("slot confirmed %s, behind the checkpoint %s: the final position was not reported", faultLSN(s.confirmed), faultLSN(cp))
	}
}

// TestSlotLossWhileRunning: the slot is dropped under a running walbust
// (its walsender terminated, the slot dropped before walbust reconnects).
// With fail it exits non-zero saying so; with resync it recreates the slot,
// invalidates everything on_truncate covers, and carries on streaming.
func TestSlotLossWhileRunning(t *testing.T) {
	for _, mode := range []string{"fail", "resync"} {
		t.Run(mode, func(t *testing.T) {
			e := newFaultEnv(t, faultOptions{items: 10, config: "on_slot_loss: " + mode + "\n"})
			p := e.startStreaming("walbust-1")
			keys := faultItemKeys(1, 1)
			e.cache(keys...)
			e.exec(`UPDATE items SET v = v + 1 WHERE id = 1`)
			e.waitGone(invalidateTimeout, keys...)

			// Valid caches, then a write no slot records.
			cached := append(faultItemKeys(2, 2), "item:5", "bulk:7")
			unrelated := []string{"session:abc"}
			e.cache(append(cached, unrelated...)...)
			e.dropSlotUnder()
			e.exec(`UPDATE items SET v = v + 1 WHERE id = 2`)

			if mode == "fail" {
				select {
				case <-p.done:
				case <-time.After(faultRecoverTimeout):
					t.Fatalf("walbust still running %v after its slot was dropped (on_slot_loss: fail)", faultRecoverTimeout)
				}
				p.expect()
				if code := p.cmd.ProcessState.ExitCode(); code == 0 {
					t.Errorf("exit code 0 after losing the slot, want non-zero")
				}
				msg := lastLine(p.log())
				for _, want := range []string{faultSlot, "on_slot_loss", "resync"} {
					if !strings.Contains(msg, want) {
						t.Errorf("the exit message does not mention %q:\n%s", want, msg)
					}
				}
				t.Logf("exit code %d, message:\n%s", p.cmd.ProcessState.ExitCode(), msg)
				if s, err := e.slot(); err != nil || s.exists {
					t.Errorf("slot %s recreated by a walbust told to fail (err %v)", faultSlot, err)
				}
				return
			}
			e.waitLog(p, `"msg":"resync complete"`, 1, faultRecoverTimeout)
			e.waitLog(p, streamingMsg, 2, faultRecoverTimeout)
			if left := e.present(cached...); len(left) > 0 {
				t.Errorf("resync left keys covered by on_truncate patterns: %v", left)
			}
			if left := e.present(unrelated...); len(left) != len(unrelated) {
				t.Errorf("resync removed keys no pattern covers: only %v of %v left", left, unrelated)
			}
			keys = faultItemKeys(4, 4)
			e.cache(keys...)
			e.exec(`UPDATE items SET v = v + 1 WHERE id = 4`)
			e.waitGone(invalidateTimeout, keys...)
			if code, took := p.term(faultStopBound); code != 0 {
				t.Errorf("exit code %d %v after SIGTERM, want 0", code, took)
			}
		})
	}
}

// dropSlotUnder terminates the walsender and drops the slot before walbust
// (whose reconnect waits at least half a second) takes it again.
func (e *faultEnv) dropSlotUnder() {
	e.t.Helper()
	deadline := time.Now().Add(faultRecoverTimeout)
	for {
		var terminated bool
		e.query(`SELECT coalesce(bool_or(pg_terminate_backend(active_pid)), false) FROM pg_replication_slots WHERE slot_name = $1 AND active_pid IS NOT NULL`,
			[]any{faultSlot}, &terminated)
		err := e.tryQuery(time.Minute, `SELECT pg_drop_replication_slot($1)`, []any{faultSlot})
		if err == nil {
			return
		}
		if !strings.Contains(err.Error(), "is active") || time.Now().After(deadline) {
			e.t.Fatalf("drop slot: %v", err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
