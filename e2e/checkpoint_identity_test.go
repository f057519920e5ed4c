package e2e

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/walbust/walbust/replication/wal"
)

// refuseTimeout bounds a `walbust run` that must refuse to start: one that
// streams instead is killed and the test fails.
const refuseTimeout = 45 * time.Second

// ckptStreamThenStop applies one write, stops walbust and returns the LSN
// its checkpoint file holds.
func (e *env) ckptStreamThenStop() wal.LSN {
	e.t.Helper()
	e.fence()
	e.stop()
	return e.ckptFileLSN()
}

// ckptFileLSN reads the first line of the checkpoint file: the position.
func (e *env) ckptFileLSN() wal.LSN {
	e.t.Helper()
	b, err := os.ReadFile(e.checkpoint)
	if err != nil {
		e.t.Fatal(err)
	}
	return opsLSN(e.t, checkpointFileLSN(b))
}

func (e *env) ckptSystemID() string {
	e.t.Helper()
	var id string
	e.queryRow(`SELECT system_identifier::text FROM pg_control_system()`, []any{&id})
	return id
}

// ckptWaitSlotIdle waits until no walsender holds the slot.
func (e *env) ckptWaitSlotIdle() {
	e.t.Helper()
	var active bool
	eventually(e.t, stopTimeout, func() bool {
		e.queryRow(`SELECT coalesce((SELECT active FROM pg_replication_slots WHERE slot_name = $1), false)`, []any{&active}, e.name)
		return !active
	}, func() string { return "slot " + e.name + " still active" })
}

func requireAll(t *testing.T, what, text string, wants ...string) {
	t.Helper()
	t.Logf("%s:\n%s", what, text)
	for _, want := range wants {
		if !strings.Contains(text, want) {
			t.Errorf("%s does not mention %q:\n%s", what, want, text)
		}
	}
}

// A checkpoint past the server's WAL (a file from elsewhere, or edited) must
// not be resumed from, nor confirmed to the slot: that would poison the slot
// for good.
func TestCheckpointPastServerWALRefused(t *testing.T) {
	e := newEnv(t, envOptions{seed: defaultSeed})
	e.ckptStreamThenStop()
	e.ckptWaitSlotIdle()
	before := e.opsSlotConfirmed()
	e.writeFile("checkpoint", "FFFFFFFF/FFFFFF00\n")

	out, code := e.opsRunUntilExit(refuseTimeout)
	if code == 0 {
		t.Fatalf("walbust run exited 0 from a checkpoint past the server's WAL:\n%s", out)
	}
	requireAll(t, "the refusal", lastLine(out), "FFFFFFFF/FFFFFF00", "beyond this server's current WAL position", e.checkpoint, "Remove")
	if after := e.opsSlotConfirmed(); after != before {
		t.Errorf("slot confirmed_flush_lsn moved from %s to %s: the refused checkpoint reached the slot", before, after)
	}

	// The fix the message gives works.
	if err := os.Remove(e.checkpoint); err != nil {
		t.Fatal(err)
	}
	e.start()
	e.fence()
}

// A checkpoint that records another cluster (re-initialised, or copied) or
// another slot is refused, naming both sides.
func TestCheckpointOfAnotherDeploymentRefused(t *testing.T) {
	e := newEnv(t, envOptions{seed: defaultSeed})
	lsn := e.ckptStreamThenStop()
	sysid := e.ckptSystemID()
	for name, tc := range map[string]struct{ file, stored string }{
		"another cluster": {fmt.Sprintf("%s\nsystem_identifier=1234567\ndatabase=%s\nslot=%s\n", lsn, e.name, e.name), "system_identifier 1234567,"},
		"another slot":    {fmt.Sprintf("%s\nsystem_identifier=%s\ndatabase=%s\nslot=other_slot\n", lsn, sysid, e.name), `slot "other_slot"`},
	} {
		t.Run(name, func(t *testing.T) {
			e.writeFile("checkpoint", tc.file)
			out, code := e.opsRunUntilExit(refuseTimeout)
			if code == 0 {
				t.Fatalf("walbust run exited 0 from %s's checkpoint:\n%s", name, out)
			}
			requireAll(t, "the refusal", lastLine(out), tc.stored, "system_identifier "+sysid+",", fmt.Sprintf("slot %q", e.name),
				"another deployment's position", "checkpoint.path", e.checkpoint)
		})
	}
}

// A slot dropped and re-created by hand under the same name starts at the
// current WAL position: whatever was written in between is never streamed.
// Without resync walbust refuses; with it, it treats it as a slot loss.
func TestCheckpointRecreatedSlotDetected(t *testing.T) {
	e := newEnv(t, envOptions{seed: defaultSeed})
	e.ckptStreamThenStop()
	e.ckptWaitSlotIdle()
	// Written while the old slot is gone: the new slot never sees it.
	e.cache("product:1")
	e.exec(`SELECT pg_drop_replication_slot($1)`, e.name)
	e.exec(`UPDATE products SET price_cents = price_cents + 1 WHERE id = 1`)
	e.exec(`SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, e.name)
	created := e.opsSlotConfirmed()

	out, code := e.opsRunUntilExit(refuseTimeout)
	if code == 0 {
		t.Fatalf("walbust run exited 0 on a re-created slot:\n%s", out)
	}
	requireAll(t, "the refusal", lastLine(out), "re-created", created.String(), "on_slot_loss", "resync", e.checkpoint)
	if after := e.opsSlotConfirmed(); after != created {
		t.Errorf("slot confirmed_flush_lsn moved from %s to %s after the refusal", created, after)
	}
	if !e.exists("product:1") {
		t.Fatal("product:1 vanished although nothing invalidated it yet")
	}

	e.regStartWith("--on-slot-loss", "resync")
	e.waitGone("product:1") // by products' on_truncate patterns
	if !strings.Contains(e.log(), "resync complete") {
		t.Error(`no "resync complete" log line`)
	}
	e.fence()
}

// The same while walbust runs: its walsender terminated, the slot dropped and
// re-created before it reconnects. Resuming would skip the write made in
// between; walbust notices on reconnect and stops (on_slot_loss: fail).
func TestCheckpointSlotRecreatedWhileRunning(t *testing.T) {
	e := newEnv(t, envOptions{seed: defaultSeed})
	e.fence()
	e.cache("product:3")
	deadline := time.Now().Add(stopTimeout)
	for {
		e.exec(`SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1 AND active_pid IS NOT NULL`, e.name)
		_, err := e.db.Exec(e.ctx, `SELECT pg_drop_replication_slot($1)`, e.name)
		if err == nil {
			break
		}
		if !strings.Contains(err.Error(), "is active") || time.Now().After(deadline) {
			t.Fatalf("drop slot %s: %v", e.name, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	e.exec(`UPDATE products SET price_cents = price_cents + 1 WHERE id = 3`)
	e.exec(`SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, e.name)

	cmd := e.proc
	select {
	case <-e.procDone:
		e.proc = nil
	case <-time.After(startTimeout):
		t.Fatalf("walbust still running %v after its slot was re-created under it", startTimeout)
	}
	if code := cmd.ProcessState.ExitCode(); code == 0 {
		t.Errorf("exit code 0 after its slot was re-created, want non-zero")
	}
	requireAll(t, "the exit message", lastLine(e.log()), "re-created", "on_slot_loss", e.checkpoint)
	if !e.exists("product:3") {
		t.Error("product:3 vanished: nothing should have invalidated it")
	}
}

// A checkpoint file written before identities were recorded (a bare LSN) is
// resumed from and rewritten with the identity.
func TestCheckpointBareLSNFileRewritten(t *testing.T) {
	e := newEnv(t, envOptions{seed: defaultSeed})
	lsn := e.ckptStreamThenStop()
	e.writeFile("checkpoint", lsn.String()+"\n")
	e.cache("product:2")
	e.exec(`UPDATE products SET price_cents = price_cents + 1 WHERE id = 2`)

	e.start()
	e.waitGone("product:2")
	b, err := os.ReadFile(e.checkpoint)
	if err != nil {
		t.Fatal(err)
	}
	requireAll(t, "the rewritten checkpoint", string(b), "system_identifier="+e.ckptSystemID()+"\n", "database="+e.name+"\n", "slot="+e.name+"\n")
	if !strings.Contains(e.log(), "checkpoint rewritten with the identity") {
		t.Error(`no "checkpoint rewritten" log line`)
	}
}

// status copes with any LSN (the checkpoint's or the slot's) and exits 1
// when the checkpoint cannot be used.
func TestCheckpointStatusHugeLSNAndCorruptFile(t *testing.T) {
	e := newEnv(t, envOptions{seed: defaultSeed})
	e.ckptStreamThenStop()
	e.ckptWaitSlotIdle()

	e.writeFile("checkpoint", "FFFFFFFF/FFFFFF00\n")
	out, code := e.walbust("status")
	if code != 1 {
		t.Errorf("status with a checkpoint past the WAL exited %d, want 1:\n%s", code, out)
	}
	requireAll(t, "status", out, "checkpoint: PROBLEM", "FFFFFFFF/FFFFFF00", "beyond")

	e.writeFile("checkpoint", "not an lsn\n")
	out, code = e.walbust("status")
	if code != 1 {
		t.Errorf("status with a corrupt checkpoint exited %d, want 1:\n%s", code, out)
	}
	requireAll(t, "status", out, "checkpoint: PROBLEM", "corrupt", e.checkpoint)

	// A slot some client confirmed FFFFFFFF/FFFFFF00 to: status says so
	// rather than failing on the lag, and run does not stream from it.
	if err := os.Remove(e.checkpoint); err != nil {
		t.Fatal(err)
	}
	e.ckptPoisonSlot(0xFFFFFFFF_FFFFFF00)
	out, code = e.walbust("status")
	if code != 1 {
		t.Errorf("status with a poisoned slot exited %d, want 1:\n%s", code, out)
	}
	requireAll(t, "status", out, "slot "+e.name+": PROBLEM", "FFFFFFFF/FFFFFF00", "beyond the server's current WAL position")
	out, code = e.opsRunUntilExit(refuseTimeout)
	if code == 0 {
		t.Fatalf("walbust run exited 0 from a poisoned slot:\n%s", out)
	}
	requireAll(t, "the refusal", lastLine(out), "FFFFFFFF/FFFFFF00", "beyond this server's current WAL position", "on_slot_loss")
}

// ckptPoisonSlot confirms lsn to the slot the way a client that trusted a
// foreign checkpoint did.
func (e *env) ckptPoisonSlot(lsn wal.LSN) {
	e.t.Helper()
	conn, err := pgconn.Connect(e.ctx, pg.URL(e.name)+"&replication=database")
	if err != nil {
		e.t.Fatal(err)
	}
	defer conn.Close(e.ctx)
	err = pglogrepl.StartReplication(e.ctx, conn, e.name, 0, pglogrepl.StartReplicationOptions{
		PluginArgs: []string{"proto_version '1'", fmt.Sprintf("publication_names '%s'", e.name)}})
	if err != nil {
		e.t.Fatal(err)
	}
	err = pglogrepl.SendStandbyStatusUpdate(e.ctx, conn, pglogrepl.StandbyStatusUpdate{WALWritePosition: pglogrepl.LSN(lsn), WALFlushPosition: pglogrepl.LSN(lsn), WALApplyPosition: pglogrepl.LSN(lsn)})
	if err != nil {
		e.t.Fatal(err)
	}
	eventually(e.t, invalidateTimeout, func() bool { return e.opsSlotConfirmed() == lsn },
		func() string { return "slot confirmed " + e.opsSlotConfirmed().String() + ", not " + lsn.String() })
}

// checkpointFileLSN is the position in a checkpoint file's contents: its
// first line (identity lines follow).
func checkpointFileLSN(b []byte) string {
	first, _, _ := strings.Cut(string(b), "\n")
	return strings.TrimSpace(first)
}
