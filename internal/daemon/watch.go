package daemon

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/zap"

	"github.com/walbust/walbust/replication"
	"github.com/walbust/walbust/replication/wal"
)

// every runs fn every interval until ctx ends.
func every(ctx context.Context, interval time.Duration, fn func(context.Context)) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		fn(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// pingRedis notices an outage while no batch is being applied. Only a
// batch that succeeds makes walbust ready again after a failed one (see
// metrics.PingResult).
func (d *daemon) pingRedis(ctx context.Context) {
	pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	d.metrics.PingResult(d.inv.Ping(pctx))
}

// lazyConn is a SQL connection that is opened on first use and again after
// any failure, for the background loops that must outlive outages.
type lazyConn struct {
	url  string
	conn *pgx.Conn
}

// do runs fn on the connection with a 5s deadline, dropping the connection
// when fn fails so the next call redials.
func (c *lazyConn) do(ctx context.Context, fn func(context.Context, *pgx.Conn) error) error {
	if c.conn == nil || c.conn.IsClosed() {
		conn, err := connectSQL(ctx, c.url)
		if err != nil {
			return err
		}
		c.conn = conn
	}
	qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := fn(qctx, c.conn); err != nil {
		closeQuietly(ctx, c.conn)
		c.conn = nil
		return err
	}
	return nil
}

// watchSlot records the slot's wal_status and safe_wal_size, and logs
// progress while a backlog is being drained.
type slotWatcher struct {
	d        *daemon
	conn     lazyConn
	lastLSN  wal.LSN
	lastTime time.Time
	warned   string
}

func (w *slotWatcher) poll(ctx context.Context) {
	var slot *replication.SlotInfo
	err := w.conn.do(ctx, func(ctx context.Context, conn *pgx.Conn) (err error) {
		slot, err = replication.LookupSlot(ctx, conn, w.d.cfg.Postgres.Slot)
		return err
	})
	if err != nil {
		return // the stream reports connection trouble; no need to repeat it
	}
	w.d.metrics.SlotObserved(slot.WALStatus, slot.SafeWALSize)
	if slot.WALStatus != w.warned && (slot.WALStatus == "unreserved" || slot.WALStatus == "lost") {
		w.d.log.Error("replication slot is at risk: Postgres may remove WAL it needs", zap.String("wal_status", slot.WALStatus))
	}
	w.warned = slot.WALStatus
	w.progress()
}

// progress logs a line while far behind: bytes behind, rate and ETA.
func (w *slotWatcher) progress() {
	st := w.d.metrics.Snapshot()
	now := time.Now()
	confirmed, _ := wal.ParseLSN(st.ConfirmedLSN)
	defer func() { w.lastLSN, w.lastTime = confirmed, now }()
	if st.LagBytes < 16<<20 || w.lastTime.IsZero() || confirmed < w.lastLSN {
		return
	}
	rate := float64(confirmed-w.lastLSN) / now.Sub(w.lastTime).Seconds()
	eta := "unknown"
	if rate > 0 {
		eta = (time.Duration(float64(st.LagBytes)/rate) * time.Second).Round(time.Second).String()
	}
	w.d.log.Info("catching up", zap.Uint64("bytes_behind", st.LagBytes), zap.String("rate", fmt.Sprintf("%.0f B/s", rate)), zap.String("eta", eta))
}

// heartbeat writes a transactional logical decoding message; its trip
// through the WAL, the stream and Redis is the lag an idle database hides,
// and it keeps the slot advancing when no published table changes.
type heartbeat struct {
	d    *daemon
	conn lazyConn
	fail int
}

func (h *heartbeat) beat(ctx context.Context) {
	err := h.conn.do(ctx, func(ctx context.Context, conn *pgx.Conn) error {
		_, err := conn.Exec(ctx, `SELECT pg_logical_emit_message(true, $1, $2)`, replication.HeartbeatPrefix, fmt.Sprint(time.Now().UnixNano()))
		return err
	})
	if err != nil {
		h.failed(err)
		return
	}
	h.fail = 0
}

func (h *heartbeat) failed(err error) {
	h.d.metrics.HeartbeatFailed()
	h.fail++
	if h.fail == 1 || h.fail%60 == 0 {
		h.d.log.Warn("heartbeat failed", zap.Error(err), zap.Int("consecutive", h.fail))
	}
}
