package e2e

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/walbust/walbust/protocol"
	"github.com/walbust/walbust/replication/wal"
)

// wmUse points the env at instance name's config: the test's config with
// its own checkpoint file, as two hosts (or emptyDirs) would have.
func (e *env) wmUse(name string) {
	e.t.Helper()
	if e.proc != nil {
		e.t.Fatal("wmUse: stop the running walbust first")
	}
	base, err := os.ReadFile(filepath.Join(e.dir, "walbust.yaml"))
	if err != nil {
		e.t.Fatal(err)
	}
	cfg := strings.Replace(string(base), "  path: checkpoint\n", "  path: checkpoint_"+name+"\n", 1)
	if cfg == string(base) {
		e.t.Fatal("wmUse: the config has no checkpoint path to replace")
	}
	e.writeFile("walbust_"+name+".yaml", cfg)
	e.configPath = filepath.Join(e.dir, "walbust_"+name+".yaml")
	e.checkpoint = filepath.Join(e.dir, "checkpoint_"+name)
}

// wmKill kills walbust with SIGKILL: no final batch, save or report.
func (e *env) wmKill() {
	e.t.Helper()
	if err := e.proc.Process.Signal(syscall.SIGKILL); err != nil {
		e.t.Fatal(err)
	}
	<-e.procDone
	e.proc = nil
}

// wmApplied reads the applied watermark from Redis (0 when absent).
func (e *env) wmApplied() wal.LSN {
	e.t.Helper()
	s, err := e.rdb.Get(e.ctx, protocol.AppliedKey(e.name)).Result()
	if errors.Is(err, redis.Nil) {
		return 0
	}
	if err != nil {
		e.t.Fatal(err)
	}
	return opsLSN(e.t, s)
}

// wmWaitSlotPast waits until the slot confirmed a position past lsn.
func (e *env) wmWaitSlotPast(lsn wal.LSN) {
	e.t.Helper()
	eventually(e.t, invalidateTimeout, func() bool { return e.opsSlotConfirmed() > lsn },
		func() string { return "slot confirmed " + e.opsSlotConfirmed().String() + ", not past " + lsn.String() })
}

// wmUpdate caches key, updates its row and waits for the invalidation.
func (e *env) wmUpdate(key string, id int) {
	e.t.Helper()
	e.cache(key)
	e.exec(`UPDATE products SET price_cents = price_cents + 1 WHERE id = $1`, id)
	e.waitGone(key)
}

// wmStartAccepted starts walbust and requires it to take the peer's
// progress from Redis: no resync, no refusal.
func (e *env) wmStartAccepted(what string) {
	e.t.Helper()
	offset := e.regLogOffset()
	e.start()
	if lines := e.regLogLines(offset, "another walbust applied up to", protocol.AppliedKey(e.name)); len(lines) == 0 {
		e.t.Errorf("%s: no info line saying another walbust applied up to the slot:\n%s", what, e.logSince(offset))
	}
	if strings.Contains(e.logSince(offset), "resyncing") {
		e.t.Errorf("%s: walbust resynced although a peer had applied everything up to the slot", what)
	}
}

// High availability with a checkpoint file per instance: each instance
// finds its own checkpoint behind the slot the other moved, and the
// watermark in Redis says the peer applied up to it. Both ways of
// stopping: SIGTERM (the final position is confirmed) and SIGKILL.
func TestCheckpointPeerProgressAccepted(t *testing.T) {
	e := newEnv(t, envOptions{seed: defaultSeed, noStart: true})
	// B runs first, so its checkpoint is older than what A does next.
	e.wmUse("b")
	e.start()
	e.fence()
	e.stop()
	bOld := e.ckptFileLSN()

	e.wmUse("a")
	e.start()
	e.wmUpdate("product:1", 1)
	e.fence()
	e.stop()
	aOld := e.ckptFileLSN()
	e.wmWaitSlotPast(bOld)

	e.wmUse("b")
	e.wmStartAccepted("B after A's SIGTERM")
	e.wmUpdate("product:2", 2)
	if got, slot := e.ckptFileLSN(), e.opsSlotConfirmed(); got < slot {
		t.Errorf("B's checkpoint %s is behind the slot's %s after streaming", got, slot)
	}

	// Now B dies with kill -9 after streaming past A's checkpoint.
	e.wmUpdate("product:3", 3)
	e.fence()
	e.wmWaitSlotPast(aOld)
	e.wmKill()
	e.ckptWaitSlotIdle()

	e.wmUse("a")
	e.wmStartAccepted("A after B's kill -9")
	e.wmUpdate("product:1", 1)
	e.fence()
}

// A slot re-created by hand is still a slot loss when the watermark is
// behind it, even though the watermark is past this instance's checkpoint
// (a peer ran later): the refusal names the watermark.
func TestCheckpointRecreatedSlotPastWatermark(t *testing.T) {
	e := newEnv(t, envOptions{seed: defaultSeed, noStart: true})
	e.wmUse("a")
	e.start()
	e.fence()
	e.stop()
	e.wmUse("b")
	e.start()
	e.fence()
	e.stop()
	e.ckptWaitSlotIdle()
	mark := e.wmApplied()

	e.cache("product:1")
	e.exec(`SELECT pg_drop_replication_slot($1)`, e.name)
	e.exec(`UPDATE products SET price_cents = price_cents + 1 WHERE id = 1`)
	e.exec(`SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, e.name)
	created := e.opsSlotConfirmed()
	if created <= mark {
		t.Fatalf("the re-created slot starts at %s, not past the watermark %s", created, mark)
	}

	e.wmUse("a")
	out, code := e.opsRunUntilExit(refuseTimeout)
	if code == 0 {
		t.Fatalf("walbust run exited 0 on a re-created slot:\n%s", out)
	}
	requireAll(t, "the refusal", lastLine(out), "re-created", created.String(), protocol.AppliedKey(e.name), mark.String(), "on_slot_loss", e.checkpoint)
	if !e.exists("product:1") {
		t.Error("product:1 vanished although nothing invalidated it")
	}
}

// The watermark follows the checkpoint: after a batch, and after idle WAL
// (writes to an unpublished table) that walbust confirms to the slot.
func TestCheckpointWatermarkFollowsCheckpoint(t *testing.T) {
	e := newEnv(t, envOptions{seed: defaultSeed})
	equal := func(what string) {
		t.Helper()
		var mark, ckpt wal.LSN
		eventually(t, invalidateTimeout, func() bool {
			// The watermark is written before the checkpoint is saved: no
			// file yet means not yet.
			b, err := os.ReadFile(e.checkpoint)
			if err != nil {
				return false
			}
			ckpt, err = wal.ParseLSN(checkpointFileLSN(b))
			mark = e.wmApplied()
			return err == nil && mark != 0 && mark == ckpt
		}, func() string { return what + ": watermark " + mark.String() + ", checkpoint " + ckpt.String() })
	}
	e.wmUpdate("product:1", 1)
	equal("after a write")
	afterWrite := e.wmApplied()

	e.exec("INSERT INTO audit_log (note) SELECT 'note ' || i FROM generate_series(1, 100) i")
	idle := e.opsWALInsertLSN()
	eventually(t, invalidateTimeout, func() bool { return e.opsSlotConfirmed() >= idle && e.wmApplied() >= idle },
		func() string {
			return "after audit_log writes up to " + idle.String() + ": slot " + e.opsSlotConfirmed().String() + ", watermark " + e.wmApplied().String()
		})
	equal("after idle WAL")
	if e.wmApplied() <= afterWrite {
		t.Errorf("the watermark did not advance past %s over idle WAL", afterWrite)
	}
	if slot, mark := e.opsSlotConfirmed(), e.wmApplied(); slot > mark {
		t.Errorf("slot confirmed %s, past the watermark %s", slot, mark)
	}
}

// When the slot is past the checkpoint and the watermark cannot be read,
// walbust decides nothing: it neither resyncs nor refuses nor streams, and
// says why, until Redis answers; then it takes the peer's progress.
func TestCheckpointPeerProgressWaitsForRedis(t *testing.T) {
	r := opsDedicatedRedis(t)
	secACL(t, r, "walbust", "on", ">pw-walbust", "~*", "&*", "+@all")
	e := newEnv(t, envOptions{seed: defaultSeed, noStart: true})
	e.opsWriteConfig(opsConfig{redisURL: "redis://walbust:pw-walbust@" + r.Addr() + "/0"})
	e.opsUseRedis(r.Client())
	e.wmUse("a")
	e.start()
	e.fence()
	e.stop()
	aOld := e.ckptFileLSN()
	e.wmUse("b")
	e.start()
	e.fence()
	e.stop()
	e.wmWaitSlotPast(aOld)
	e.ckptWaitSlotIdle()

	secACL(t, r, "walbust", "-get")
	e.wmUse("a")
	offset := e.regLogOffset()
	e.launch(nil, nil)
	e.regWaitLog(offset, `Redis cannot be read to tell whether another walbust applied up to it; waiting for Redis before streaming`, startTimeout)
	for _, s := range []string{`"msg":"streaming"`, "resyncing", "on_slot_loss"} {
		if strings.Contains(e.logSince(offset), s) {
			t.Fatalf("walbust decided (%q) while the watermark could not be read:\n%s", s, e.logSince(offset))
		}
	}
	select {
	case <-e.procDone:
		e.proc = nil
		t.Fatalf("walbust exited while the watermark could not be read:\n%s", e.logSince(offset))
	default:
	}

	secACL(t, r, "walbust", "+get")
	e.regWaitLog(offset, `"msg":"streaming"`, startTimeout)
	if lines := e.regLogLines(offset, "another walbust applied up to"); len(lines) == 0 {
		t.Errorf("no line saying another walbust applied up to the slot:\n%s", e.logSince(offset))
	}
	e.wmUpdate("product:1", 1)
}
