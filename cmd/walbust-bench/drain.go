package main

import (
	"context"
	"fmt"
	"os/exec"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/walbust/walbust/replication/wal"
)

// drainResult is part 1 (backlog drain against pg_recvlogical) and the
// drain half of part 4 (peak RSS while draining).
type drainResult struct {
	SingleRowTxs    int64   `json:"single_row_txs"`
	BigTxs          int     `json:"big_txs"`
	BigTxRows       int     `json:"big_tx_rows"`
	Transactions    int64   `json:"transactions"`
	RowChanges      int64   `json:"row_changes"`
	WALBytes        int64   `json:"wal_bytes"`
	StartLSN        string  `json:"start_lsn"`
	EndLSN          string  `json:"end_lsn"`
	GenerateSeconds float64 `json:"generate_seconds"`
	// An untimed pg_recvlogical pass over a third copy of the slot, before
	// the timed runs.
	WarmupSeconds float64 `json:"warmup_seconds"`
	// Medians over runs.
	RecvRowsPerSec    float64    `json:"pg_recvlogical_rows_per_sec"`
	WalbustRowsPerSec float64    `json:"walbust_rows_per_sec"`
	Ratio             float64    `json:"ratio_walbust_to_pg_recvlogical"`
	PeakRSSMB         float64    `json:"walbust_peak_rss_mb"` // max over runs
	Runs              []drainRun `json:"runs"`
}

type drainRun struct {
	RecvSlot          string  `json:"pg_recvlogical_slot"`
	WalbustSlot       string  `json:"walbust_slot"`
	WalbustFirst      bool    `json:"walbust_first"`
	RecvSeconds       float64 `json:"pg_recvlogical_seconds"`
	WalbustSeconds    float64 `json:"walbust_seconds"` // process start to slot confirmed at the end LSN
	WalbustStreamSecs float64 `json:"walbust_seconds_from_streaming"`
	RecvRowsPerSec    float64 `json:"pg_recvlogical_rows_per_sec"`
	WalbustRowsPerSec float64 `json:"walbust_rows_per_sec"`
	Ratio             float64 `json:"ratio"`
	PeakRSSMB         float64 `json:"walbust_peak_rss_mb"`
	KeysSeeded        int     `json:"keys_seeded"`
	KeysChecked       int     `json:"keys_checked"`
	KeysLeft          int64   `json:"keys_left"` // keys of changed rows still in Redis afterwards: must be 0
	// CPU per row change.
	RecvCPU    cpuUse `json:"pg_recvlogical_cpu"`
	WalbustCPU cpuUse `json:"walbust_cpu"`
}

const singleAccountScript = `\set id random(1, :naccounts)
UPDATE accounts SET balance = balance + 1, v = v + 1 WHERE id = :id;
`

const singleOrderScript = `\set id random(1, :norders)
UPDATE orders SET total = total + 1, v = v + 1 WHERE id = :id;
`

// backlogClients is how many pgbench clients write the single-row part.
const backlogClients = 4

func runDrain(ctx context.Context, e *env) (*drainResult, error) {
	sc := e.sc
	res := &drainResult{BigTxs: sc.BigTxs, BigTxRows: sc.BigTxRows}
	if err := e.setup(ctx, drainSlot); err != nil {
		return nil, err
	}
	type pair struct{ recv, wb string }
	var pairs []pair
	for r := range sc.DrainRuns {
		p := pair{recv: "recv_" + string(rune('a'+r)), wb: drainSlot}
		if r > 0 {
			p.wb = drainSlot + "_" + strconv.Itoa(r+1)
		}
		pairs = append(pairs, p)
	}
	// A third copy, drained untimed before the timed runs: whichever
	// consumer went first would otherwise pay for what the first pass over
	// fresh WAL costs (observed: the first timed drain took twice as long
	// as the later ones, whatever the consumer).
	const warmSlot = "recv_warmup"
	defer func() {
		// The drained slots only retain WAL from here on.
		for _, p := range pairs {
			_ = e.dropSlot(context.WithoutCancel(ctx), p.recv)
			_ = e.dropSlot(context.WithoutCancel(ctx), p.wb)
		}
		_ = e.dropSlot(context.WithoutCancel(ctx), warmSlot)
	}()
	if err := e.exec(ctx, "SELECT pg_copy_logical_replication_slot($1, $2)", drainSlot, warmSlot); err != nil {
		return nil, fmt.Errorf("copy slot %s to %s: %w", drainSlot, warmSlot, err)
	}
	for _, p := range pairs {
		for _, s := range []string{p.recv, p.wb} {
			if s == drainSlot {
				continue
			}
			if err := e.exec(ctx, "SELECT pg_copy_logical_replication_slot($1, $2)", drainSlot, s); err != nil {
				return nil, fmt.Errorf("copy slot %s to %s: %w", drainSlot, s, err)
			}
		}
	}
	start, err := e.confirmedLSN(ctx, drainSlot)
	if err != nil {
		return nil, err
	}
	res.StartLSN = start.String()

	// The backlog, written while nobody consumes: single-row transactions
	// from pgbench clients, interleaved with the big transactions.
	e.logf("part 1: writing the backlog: %d single-row transactions and %d transactions of %d rows", sc.SingleTxs, sc.BigTxs, sc.BigTxRows)
	genStart := time.Now()
	perClient := (sc.SingleTxs + backlogClients - 1) / backlogClients
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		r, err := e.pgbench(gctx, []script{
			{name: "backlog_accounts", body: singleAccountScript, weight: 1},
			{name: "backlog_orders", body: singleOrderScript, weight: 1},
		}, "-c synchronous_commit=off",
			"-c", strconv.Itoa(backlogClients), "-j", "2", "-t", strconv.Itoa(perClient),
			"-D", "naccounts="+strconv.Itoa(sc.Accounts), "-D", "norders="+strconv.Itoa(sc.Orders))
		res.SingleRowTxs = r.Transactions
		return err
	})
	g.Go(func() error {
		conn, err := e.pg.Connect(gctx, dbName)
		if err != nil {
			return err
		}
		defer conn.Close(context.WithoutCancel(gctx))
		if _, err := conn.Exec(gctx, "SET synchronous_commit = off"); err != nil {
			return err
		}
		for j := range sc.BigTxs {
			lo := (j*sc.BigTxRows)%sc.Orders + 1
			tag, err := conn.Exec(gctx, "UPDATE orders SET total = total + 1, v = v + 1 WHERE id BETWEEN $1 AND $2", lo, lo+sc.BigTxRows-1)
			if err != nil {
				return fmt.Errorf("big transaction %d: %w", j, err)
			}
			if tag.RowsAffected() != int64(sc.BigTxRows) {
				return fmt.Errorf("big transaction %d changed %d rows, want %d", j, tag.RowsAffected(), sc.BigTxRows)
			}
		}
		return nil
	})
	if err := g.Wait(); err != nil {
		return nil, err
	}
	end, err := e.fence(ctx)
	if err != nil {
		return nil, err
	}
	res.GenerateSeconds = time.Since(genStart).Seconds()
	// The backlog leaves a million dead rows behind: vacuum them now, and
	// checkpoint, so autovacuum and the checkpointer do not land on
	// whichever consumer happens to be timed first.
	e.logf("part 1: vacuum and checkpoint before timing")
	for _, sql := range []string{"VACUUM accounts", "VACUUM orders", "CHECKPOINT"} {
		if err := e.exec(ctx, sql); err != nil {
			return nil, fmt.Errorf("%s: %w", sql, err)
		}
	}
	syscall.Sync() // write back the dirty pages now rather than during a timed run
	res.EndLSN = end.String()
	res.WALBytes = int64(end - start)
	res.Transactions = res.SingleRowTxs + int64(sc.BigTxs)
	res.RowChanges = res.SingleRowTxs + int64(sc.BigTxs*sc.BigTxRows)
	e.logf("part 1: backlog of %d row changes in %d transactions, %.0f MB of WAL, written in %.1fs",
		res.RowChanges, res.Transactions, float64(res.WALBytes)/1e6, res.GenerateSeconds)

	keysStart := time.Now()
	seed := e.allKeys()
	touched, err := e.touchedKeys(ctx)
	if err != nil {
		return nil, err
	}
	e.logf("part 1: %d keys to seed, %d keys of changed rows to check afterwards (listed in %.1fs)", len(seed), len(touched), time.Since(keysStart).Seconds())
	var warm drainRun
	if err := drainRecv(ctx, e, warmSlot, end, &warm); err != nil {
		return nil, fmt.Errorf("warm-up: %w", err)
	}
	res.WarmupSeconds = warm.RecvSeconds
	e.logf("part 1: warm-up drain (untimed) took %.2fs", warm.RecvSeconds)
	var recvRates, wbRates []float64
	for r, p := range pairs {
		run := drainRun{RecvSlot: p.recv, WalbustSlot: p.wb, WalbustFirst: r%2 == 1}
		steps := []func() error{
			func() error { return drainRecv(ctx, e, p.recv, end, &run) },
			func() error {
				return drainWalbust(ctx, e, fmt.Sprintf("drain-%d", r+1), p.wb, end, seed, touched, &run)
			},
		}
		if run.WalbustFirst {
			steps[0], steps[1] = steps[1], steps[0]
		}
		for _, step := range steps {
			if err := step(); err != nil {
				return res, err
			}
		}
		run.RecvRowsPerSec = float64(res.RowChanges) / run.RecvSeconds
		run.WalbustRowsPerSec = float64(res.RowChanges) / run.WalbustSeconds
		run.Ratio = run.WalbustRowsPerSec / run.RecvRowsPerSec
		run.RecvCPU.per(res.RowChanges)
		run.WalbustCPU.per(res.RowChanges)
		e.logf("part 1 run %d: pg_recvlogical %.2fs (%.0f rows/s), walbust %.2fs (%.0f rows/s), ratio %.2f, walbust peak RSS %.0f MB, keys left %d",
			r+1, run.RecvSeconds, run.RecvRowsPerSec, run.WalbustSeconds, run.WalbustRowsPerSec, run.Ratio, run.PeakRSSMB, run.KeysLeft)
		res.Runs = append(res.Runs, run)
		recvRates = append(recvRates, run.RecvRowsPerSec)
		wbRates = append(wbRates, run.WalbustRowsPerSec)
		res.PeakRSSMB = max(res.PeakRSSMB, run.PeakRSSMB)
	}
	res.RecvRowsPerSec, res.WalbustRowsPerSec = median(recvRates), median(wbRates)
	res.Ratio = res.WalbustRowsPerSec / res.RecvRowsPerSec
	for _, run := range res.Runs {
		if run.KeysLeft != 0 {
			return res, fmt.Errorf("walbust drained slot %s but %d keys of changed rows are still in Redis", run.WalbustSlot, run.KeysLeft)
		}
	}
	return res, nil
}

// drainRecv times pg_recvlogical reading slot to end, with the plugin
// options walbust uses, writing the pgoutput stream to /dev/null.
func drainRecv(ctx context.Context, e *env, slot string, end wal.LSN, run *drainRun) error {
	e.logf("part 1: pg_recvlogical draining slot %s to %s", slot, end)
	rctx, cancel := context.WithTimeout(ctx, 30*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(rctx, e.pg.Bin("pg_recvlogical"), "-d", e.dbURL, "--slot", slot, "--start",
		"--endpos", end.String(), "--no-loop", "-f", "/dev/null",
		"-o", "proto_version=2", "-o", "publication_names="+publication, "-o", "streaming=on", "-o", "messages=true")
	sender := e.watchSender(ctx, slot)
	t0 := time.Now()
	out, err := cmd.CombinedOutput()
	run.RecvSeconds = time.Since(t0).Seconds()
	run.RecvCPU.SenderSeconds = sender.seconds()
	if err != nil {
		return fmt.Errorf("pg_recvlogical: %w\n%s", err, out)
	}
	run.RecvCPU.ConsumerSeconds = (cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()).Seconds()
	return nil
}

// drainWalbust times walbust from process start until slot's confirmed
// position reaches end, with every invalidation applied to Redis, then
// checks that the keys of every changed row are gone.
func drainWalbust(ctx context.Context, e *env, name, slot string, end wal.LSN, seed, touched []string, run *drainRun) error {
	if err := e.flushRedis(ctx); err != nil {
		return err
	}
	if err := e.setKeys(ctx, seed); err != nil {
		return err
	}
	run.KeysSeeded, run.KeysChecked = len(seed), len(touched)
	e.logf("part 1: walbust draining slot %s to %s (Redis seeded with %d keys)", slot, end, len(seed))
	redis0, err := redisCPUSeconds(ctx, e.rdb)
	if err != nil {
		return err
	}
	sender := e.watchSender(ctx, slot)
	w, err := e.startWalbust(ctx, name, slot, e.deps)
	if err != nil {
		sender.seconds()
		return err
	}
	defer w.stop()
	doneAt, err := e.waitConfirmed(ctx, slot, end, 30*time.Minute, 5*time.Millisecond, w)
	run.WalbustCPU.SenderSeconds = sender.seconds()
	if err != nil {
		return err
	}
	if run.WalbustCPU.ConsumerSeconds, err = procCPUSeconds(w.pid()); err != nil {
		return err
	}
	redis1, err := redisCPUSeconds(ctx, e.rdb)
	if err != nil {
		return err
	}
	run.WalbustCPU.RedisSeconds = redis1 - redis0
	run.WalbustSeconds = doneAt.Sub(w.started).Seconds()
	select {
	case <-w.streaming: // streamingAt is set before streaming is closed
		run.WalbustStreamSecs = doneAt.Sub(w.streamingAt).Seconds()
	default:
	}
	peak, err := w.peakRSS()
	if err != nil {
		return err
	}
	run.PeakRSSMB = float64(peak) / 1024
	if err := w.stop(); err != nil {
		return err
	}
	run.KeysLeft, err = e.countExisting(ctx, touched)
	return err
}

// allKeys is every key the registry can render for the table contents.
func (e *env) allKeys() []string {
	sc := e.sc
	keys := make([]string, 0, 3*(sc.Accounts+1)+orgs+sc.Orders+sc.Accounts)
	for id := 0; id <= sc.Accounts; id++ {
		keys = append(keys, "account:"+strconv.Itoa(id), "account:"+strconv.Itoa(id)+":profile", "account-by-email:"+email(id))
	}
	for o := range orgs {
		keys = append(keys, "org:"+strconv.Itoa(o)+":accounts")
	}
	for id := 1; id <= sc.Orders; id++ {
		keys = append(keys, "order:"+strconv.Itoa(id))
	}
	for a := 1; a <= sc.Accounts; a++ {
		keys = append(keys, "account:"+strconv.Itoa(a)+":orders")
	}
	return keys
}

// touchedKeys renders the keys of every row the backlog changed (v > 0).
func (e *env) touchedKeys(ctx context.Context) ([]string, error) {
	seen := map[string]bool{}
	var keys []string
	add := func(ks []string) {
		for _, k := range ks {
			if !seen[k] {
				seen[k] = true
				keys = append(keys, k)
			}
		}
	}
	rows, err := e.db.Query(ctx, "SELECT id, org_id, email FROM accounts WHERE v > 0")
	if err != nil {
		return nil, err
	}
	for rows.Next() {
		var id, org int
		var em string
		if err := rows.Scan(&id, &org, &em); err != nil {
			return nil, err
		}
		add(accountKeys(id, org, em))
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	rows, err = e.db.Query(ctx, "SELECT id, account_id FROM orders WHERE v > 0")
	if err != nil {
		return nil, err
	}
	for rows.Next() {
		var id, acc int
		if err := rows.Scan(&id, &acc); err != nil {
			return nil, err
		}
		add(orderKeys(id, acc))
	}
	return keys, rows.Err()
}
