package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

// writersResult is part 3: what each way of invalidating costs the writers.
type writersResult struct {
	Clients    int     `json:"clients"`
	Seconds    float64 `json:"seconds_per_run"`
	NoSlotTPS  float64 `json:"no_slot_tps"` // medians over runs
	RecvTPS    float64 `json:"pg_recvlogical_tps"`
	WalbustTPS float64 `json:"walbust_tps"`
	NotifyTPS  float64 `json:"notify_tps"`
	// Ratios to no slot. pg_recvlogical's is what logical decoding alone
	// costs the writers on this machine: the floor for any slot consumer.
	RecvRatio    float64      `json:"pg_recvlogical_ratio"`
	WalbustRatio float64      `json:"walbust_ratio"`
	NotifyRatio  float64      `json:"notify_ratio"`
	Runs         []writersRun `json:"runs"`
}

type writersRun struct {
	Run          int     `json:"run"`
	Config       string  `json:"config"` // no_slot, pg_recvlogical, walbust, notify
	TPS          float64 `json:"tps"`
	Transactions int64   `json:"transactions"`
	// walbust: how far behind it was when the writers stopped, and how long
	// it took to catch up.
	SlotLagBytesAtEnd int64   `json:"slot_lag_bytes_at_end,omitempty"`
	CatchUpSeconds    float64 `json:"catch_up_seconds,omitempty"`
	// notify: notifications the listener had not yet received when the
	// writers stopped, and how long it took to receive them all.
	Notifications        int64   `json:"notifications,omitempty"`
	ListenerBacklogAtEnd int64   `json:"listener_backlog_at_end,omitempty"`
	ListenerDrainSeconds float64 `json:"listener_drain_seconds,omitempty"`
	// pg_recvlogical and walbust: CPU per transaction while pgbench ran.
	CPU *cpuUse `json:"cpu,omitempty"`
}

const writerScript = `\set id random(1, :naccounts)
UPDATE accounts SET balance = balance + 1 WHERE id = :id;
`

// notifySQL is the usual alternative: an AFTER trigger that sends the row's
// keys (old and new) through NOTIFY to a listener that unlinks them.
const notifySQL = `
CREATE FUNCTION bench_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('bench_invalidate',
    'account:' || OLD.id || ' account:' || OLD.id || ':profile org:' || OLD.org_id || ':accounts account-by-email:' || OLD.email ||
    ' account:' || NEW.id || ' account:' || NEW.id || ':profile org:' || NEW.org_id || ':accounts account-by-email:' || NEW.email);
  RETURN NULL;
END $$;
CREATE TRIGGER bench_notify AFTER UPDATE ON accounts FOR EACH ROW EXECUTE FUNCTION bench_notify();
`

const dropNotifySQL = `DROP TRIGGER IF EXISTS bench_notify ON accounts; DROP FUNCTION IF EXISTS bench_notify();`

func runWritersCost(ctx context.Context, e *env) (*writersResult, error) {
	sc := e.sc
	res := &writersResult{Clients: sc.WriterClients, Seconds: sc.WriterDuration.Seconds()}
	configs := []string{"no_slot", "pg_recvlogical", "walbust", "notify"}
	tps := map[string][]float64{}
	for r := range sc.WriterRuns {
		// Rotate the order so drift (table bloat, autovacuum, neighbours)
		// does not always land on the same configuration.
		for i := range configs {
			config := configs[(i+r)%len(configs)]
			run := writersRun{Run: r + 1, Config: config}
			if err := prepareWriters(ctx, e); err != nil {
				return res, err
			}
			e.logf("part 3 run %d: %s: pgbench, %d clients, %v", r+1, config, sc.WriterClients, sc.WriterDuration)
			var err error
			switch config {
			case "no_slot":
				err = writersNoSlot(ctx, e, &run)
			case "pg_recvlogical":
				err = writersRecv(ctx, e, &run)
			case "walbust":
				err = writersWalbust(ctx, e, r, &run)
			case "notify":
				err = writersNotify(ctx, e, &run)
			}
			if err != nil {
				return res, fmt.Errorf("part 3 %s: %w", config, err)
			}
			e.logf("part 3 run %d: %s: %.0f tps", r+1, config, run.TPS)
			res.Runs = append(res.Runs, run)
			tps[config] = append(tps[config], run.TPS)
		}
	}
	res.NoSlotTPS, res.WalbustTPS, res.NotifyTPS = median(tps["no_slot"]), median(tps["walbust"]), median(tps["notify"])
	res.RecvTPS = median(tps["pg_recvlogical"])
	res.RecvRatio = res.RecvTPS / res.NoSlotTPS
	res.WalbustRatio = res.WalbustTPS / res.NoSlotTPS
	res.NotifyRatio = res.NotifyTPS / res.NoSlotTPS
	return res, nil
}

// prepareWriters gives every configuration the same starting point: no
// slot, no trigger, a vacuumed table and a fresh checkpoint.
func prepareWriters(ctx context.Context, e *env) error {
	if err := e.dropAllSlots(ctx); err != nil {
		return fmt.Errorf("drop slots: %w", err)
	}
	if err := e.exec(ctx, dropNotifySQL); err != nil {
		return err
	}
	_, err := e.db.Exec(ctx, "VACUUM accounts")
	if err == nil {
		_, err = e.db.Exec(ctx, "CHECKPOINT")
	}
	return err
}

func (e *env) writerPgbench(ctx context.Context) (pgbenchResult, error) {
	return e.pgbench(ctx, []script{{name: "writers", body: writerScript}}, "",
		"-c", strconv.Itoa(e.sc.WriterClients), "-j", "2", "-T", strconv.Itoa(int(e.sc.WriterDuration.Seconds())),
		"-D", "naccounts="+strconv.Itoa(e.sc.Accounts))
}

func writersNoSlot(ctx context.Context, e *env, run *writersRun) error {
	r, err := e.writerPgbench(ctx)
	run.TPS, run.Transactions = r.TPS, r.Transactions
	return err
}

// writersRecv runs the writers while pg_recvlogical streams a slot of its
// own to /dev/null with walbust's plugin options.
func writersRecv(ctx context.Context, e *env, run *writersRun) error {
	const slot = "recv_live"
	if err := e.exec(ctx, "SELECT pg_create_logical_replication_slot($1, 'pgoutput')", slot); err != nil {
		return err
	}
	defer e.dropSlot(context.WithoutCancel(ctx), slot)
	cmd := exec.Command(e.pg.Bin("pg_recvlogical"), "-d", e.dbURL, "--slot", slot, "--start", "--no-loop", "-f", "/dev/null",
		"-s", "1", "-o", "proto_version=2", "-o", "publication_names="+publication, "-o", "streaming=on", "-o", "messages=true")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start pg_recvlogical: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		select {
		case <-exited:
		default:
			_ = cmd.Process.Signal(syscall.SIGINT)
			select {
			case <-exited:
			case <-time.After(10 * time.Second):
				_ = cmd.Process.Kill()
				<-exited
			}
		}
	}()
	// Wait until it holds the slot.
	for deadline := time.Now().Add(30 * time.Second); ; {
		var active bool
		if err := e.db.QueryRow(ctx, "SELECT active FROM pg_replication_slots WHERE slot_name = $1", slot).Scan(&active); err != nil {
			return err
		}
		if active {
			break
		}
		select {
		case err := <-exited:
			return fmt.Errorf("pg_recvlogical exited: %v\n%s", err, out.String())
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("pg_recvlogical did not start streaming within 30s\n%s", out.String())
		}
	}
	cpu0, err := procCPUSeconds(cmd.Process.Pid)
	if err != nil {
		return err
	}
	sender := e.watchSender(ctx, slot)
	res, err := e.writerPgbench(ctx)
	run.TPS, run.Transactions = res.TPS, res.Transactions
	run.CPU = &cpuUse{SenderSeconds: sender.seconds()}
	if err != nil {
		return err
	}
	select {
	case err := <-exited:
		exited <- err // for the deferred stop
		return fmt.Errorf("pg_recvlogical exited during the run: %v\n%s", err, out.String())
	default:
	}
	cpu1, err := procCPUSeconds(cmd.Process.Pid)
	if err != nil {
		return err
	}
	run.CPU.ConsumerSeconds = cpu1 - cpu0
	run.CPU.per(res.Transactions)
	return nil
}

func writersWalbust(ctx context.Context, e *env, r int, run *writersRun) error {
	if err := e.setup(ctx, liveSlot); err != nil {
		return err
	}
	defer e.dropSlot(context.WithoutCancel(ctx), liveSlot)
	w, err := e.startWalbust(ctx, fmt.Sprintf("writers-%d", r+1), liveSlot, e.deps)
	if err != nil {
		return err
	}
	defer w.stop()
	if err := w.waitStreaming(ctx); err != nil {
		return err
	}
	cpu0, err := procCPUSeconds(w.pid())
	if err != nil {
		return err
	}
	redis0, err := redisCPUSeconds(ctx, e.rdb)
	if err != nil {
		return err
	}
	sender := e.watchSender(ctx, liveSlot)
	res, err := e.writerPgbench(ctx)
	run.CPU = &cpuUse{SenderSeconds: sender.seconds()}
	if err != nil {
		return err
	}
	stopped := time.Now()
	run.TPS, run.Transactions = res.TPS, res.Transactions
	cpu1, err := procCPUSeconds(w.pid())
	if err != nil {
		return err
	}
	redis1, err := redisCPUSeconds(ctx, e.rdb)
	if err != nil {
		return err
	}
	run.CPU.ConsumerSeconds, run.CPU.RedisSeconds = cpu1-cpu0, redis1-redis0
	run.CPU.per(res.Transactions)
	if err := e.db.QueryRow(ctx, `SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint
		FROM pg_replication_slots WHERE slot_name = $1`, liveSlot).Scan(&run.SlotLagBytesAtEnd); err != nil {
		return err
	}
	target, err := e.fence(ctx)
	if err != nil {
		return err
	}
	caught, err := e.waitConfirmed(ctx, liveSlot, target, 10*time.Minute, 10*time.Millisecond, w)
	if err != nil {
		return err
	}
	run.CatchUpSeconds = caught.Sub(stopped).Seconds()
	return w.stop()
}

func writersNotify(ctx context.Context, e *env, run *writersRun) error {
	if err := e.exec(ctx, notifySQL); err != nil {
		return fmt.Errorf("create trigger: %w", err)
	}
	defer e.exec(context.WithoutCancel(ctx), dropNotifySQL)
	conn, err := e.pg.Connect(ctx, dbName)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, "LISTEN bench_invalidate"); err != nil {
		return err
	}
	var received atomic.Int64
	lctx, stopListener := context.WithCancel(ctx)
	listenerDone := make(chan error, 1)
	go func() {
		// The listener a team would write: one UNLINK per notification.
		for {
			n, err := conn.WaitForNotification(lctx)
			if err != nil {
				if lctx.Err() != nil {
					err = nil
				}
				listenerDone <- err
				return
			}
			if err := e.rdb.Unlink(lctx, strings.Fields(n.Payload)...).Err(); err != nil && lctx.Err() == nil {
				listenerDone <- fmt.Errorf("listener: unlink: %w", err)
				return
			}
			received.Add(1)
		}
	}()
	defer func() {
		stopListener()
		<-listenerDone
	}()
	res, err := e.writerPgbench(ctx)
	if err != nil {
		return err
	}
	stopped := time.Now()
	run.TPS, run.Transactions = res.TPS, res.Transactions
	run.ListenerBacklogAtEnd = max(0, res.Transactions-received.Load())
	deadline := time.Now().Add(5 * time.Minute)
	for received.Load() < res.Transactions {
		select {
		case err := <-listenerDone:
			listenerDone <- err
			return fmt.Errorf("listener stopped after %d of %d notifications: %v", received.Load(), res.Transactions, err)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return errors.New("the listener did not receive every notification within 5 minutes")
		}
	}
	run.ListenerDrainSeconds = time.Since(stopped).Seconds()
	run.Notifications = received.Load()
	return nil
}
