package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/walbust/walbust/checkpoint"
	"github.com/walbust/walbust/internal/metrics"
	"github.com/walbust/walbust/replication"
	"github.com/walbust/walbust/replication/wal"
)

// statusReport is what `walbust status --json` prints.
type statusReport struct {
	Slot        *slotStatus `json:"slot"`
	SlotProblem string      `json:"slot_problem,omitempty"`
	Publication []string    `json:"publication_tables"`
	Checkpoint  string      `json:"checkpoint_lsn"`
	// CheckpointIdentity is nil for a file that records none yet.
	CheckpointIdentity *checkpoint.Identity `json:"checkpoint_identity,omitempty"`
	CheckpointProblem  string               `json:"checkpoint_problem,omitempty"`
	Daemon             *metrics.Status      `json:"daemon,omitempty"`
	DaemonError        string               `json:"daemon_error,omitempty"`
}

type slotStatus struct {
	Name              string `json:"name"`
	Active            bool   `json:"active"`
	ActivePID         *int32 `json:"active_pid"`
	ConfirmedFlushLSN string `json:"confirmed_flush_lsn"`
	WALStatus         string `json:"wal_status"`
	SafeWALSize       *int64 `json:"safe_wal_size"`
	LagBytes          int64  `json:"lag_bytes"`
}

// errUnhealthy makes status exit non-zero after printing its report.
var errUnhealthy = errors.New("replication slot missing or lost, or checkpoint unusable")

// statusCommand answers "is it keeping up?" from Postgres, the checkpoint
// file and, when reachable, the daemon itself. It exits 1 when the slot is
// missing or lost or the checkpoint file is unreadable, so it can back an
// alert.
func statusCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("status", `Usage: walbust status [--config walbust.yaml] [--shard NAME] [--json]

Shows the slot, the lag, the checkpoint and, when reachable at listen, the daemon's own health.
Exit 1 when the slot is missing or lost or the checkpoint is unusable.`, stderr)
	asJSON := fs.Bool("json", false, "print JSON")
	l, err := loadWith(fs, args, stderr)
	if err != nil {
		return err
	}
	if err := l.requireShard("status"); err != nil {
		return err
	}
	var rep statusReport
	var current wal.LSN // 0: not known (no slot)
	conn, err := connectSQL(ctx, l.cfg.Postgres.URL)
	if err != nil {
		return err
	}
	defer closeQuietly(ctx, conn)
	slot, err := replication.LookupSlot(ctx, conn, l.cfg.Postgres.Slot)
	switch {
	case errors.Is(err, replication.ErrNoSlot):
		rep.SlotProblem = "slot does not exist"
	case err != nil:
		return err
	default:
		rep.Slot = &slotStatus{Name: slot.Name, Active: slot.Active, ActivePID: slot.ActivePID,
			ConfirmedFlushLSN: slot.ConfirmedFlushLSN.String(), WALStatus: slot.WALStatus, SafeWALSize: slot.SafeWALSize}
		if current, err = currentWAL(ctx, conn); err != nil {
			return err
		}
		rep.Slot.LagBytes, rep.SlotProblem = slotLag(slot.ConfirmedFlushLSN, current)
		if slot.WALStatus == "lost" {
			rep.SlotProblem = "slot is lost (wal_status=lost): changes were missed"
		}
	}
	if rep.Publication, err = replication.PublishedTables(ctx, conn, l.cfg.Postgres.Publication); err != nil {
		return err
	}
	readCheckpoint(l.cfg.Checkpoint.Path, current, &rep)
	if l.cfg.Listen != "" {
		rep.Daemon, err = fetchDaemonStatus(ctx, l.cfg.Listen)
		if err != nil {
			rep.DaemonError = err.Error()
		}
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			return err
		}
	} else {
		printStatus(stdout, l.cfg.Postgres.Slot, l.cfg.Postgres.Publication, l.cfg.Listen, &rep)
	}
	if rep.SlotProblem != "" || rep.CheckpointProblem != "" {
		return errUnhealthy
	}
	return nil
}

func fetchDaemonStatus(ctx context.Context, addr string) (*metrics.Status, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/status", nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("daemon not reachable at %s: %w", addr, err)
	}
	defer resp.Body.Close()
	var st metrics.Status
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return nil, fmt.Errorf("daemon status from %s: %w", addr, err)
	}
	return &st, nil
}

func printStatus(w io.Writer, slotName, publication, listen string, rep *statusReport) {
	if s := rep.Slot; s != nil {
		active := "inactive"
		if s.Active && s.ActivePID != nil {
			active = fmt.Sprintf("active (pid %d)", *s.ActivePID)
		}
		safe := "unlimited"
		if s.SafeWALSize != nil {
			safe = bytesString(uint64(max(*s.SafeWALSize, 0)))
		}
		fmt.Fprintf(w, "slot %s: %s, confirmed %s, lag %s, wal_status %s, safe_wal_size %s\n",
			s.Name, active, s.ConfirmedFlushLSN, bytesString(uint64(max(s.LagBytes, 0))), s.WALStatus, safe)
	}
	if rep.SlotProblem != "" {
		fmt.Fprintf(w, "slot %s: PROBLEM: %s\n", slotName, rep.SlotProblem)
	}
	fmt.Fprintf(w, "publication %s: %d table(s) %v\n", publication, len(rep.Publication), rep.Publication)
	switch {
	case rep.CheckpointProblem != "":
		fmt.Fprintf(w, "checkpoint: PROBLEM: %s\n", rep.CheckpointProblem)
	case rep.CheckpointIdentity != nil:
		fmt.Fprintf(w, "checkpoint: %s (%s)\n", rep.Checkpoint, rep.CheckpointIdentity)
	default:
		fmt.Fprintf(w, "checkpoint: %s\n", rep.Checkpoint)
	}
	switch {
	case rep.Daemon != nil:
		d := rep.Daemon
		state := "ready"
		if !d.Ready {
			state = "NOT READY: " + d.NotReadyReason
			if !d.NotReadySince.IsZero() {
				state = fmt.Sprintf("NOT READY for %s (since %s): %s", time.Since(d.NotReadySince).Round(time.Second),
					d.NotReadySince.UTC().Format(time.RFC3339), d.NotReadyReason)
			}
		}
		last := "never"
		if !d.LastCommitTime.IsZero() {
			last = time.Since(d.LastCommitTime).Round(time.Millisecond).String() + " ago"
		}
		fmt.Fprintf(w, "daemon %s (%s): %s, lag %s, last commit applied %s, %d transactions since start\n",
			listen, d.Version, state, bytesString(d.LagBytes), last, d.Transactions)
	case rep.DaemonError != "":
		fmt.Fprintf(w, "daemon: %s\n", rep.DaemonError)
	}
}

func bytesString(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
