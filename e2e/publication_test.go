package e2e

import (
	"net/http"
	"os"
	"strings"
	"testing"
	"time"
)

// publicationTimeout: walbust hits the missing publication on the next
// decoded change, and retries its check every few seconds.
const publicationTimeout = 60 * time.Second

// TestDroppedPublicationFail: DROP PUBLICATION under a running walbust
// (on_slot_loss: fail). It exits non-zero saying what happened and what to
// do; re-creating the publication alone does not help (the slot reads the
// publication as of each change), and it says so again; the steps the
// message names bring it back.
func TestDroppedPublicationFail(t *testing.T) {
	e := newEnv(t, envOptions{seed: defaultSeed})
	e.fence()
	e.exec("DROP PUBLICATION " + e.name)
	e.exec("UPDATE products SET price_cents = price_cents + 1 WHERE id = 1")
	code := e.pubWaitExit(publicationTimeout)
	if code == 0 {
		t.Fatal("walbust exited 0 after its publication was dropped")
	}
	msg := lastLine(e.log())
	wants := []string{`publication "` + e.name + `" was dropped`, "re-creating the publication does not help", "on_slot_loss: resync",
		"pg_drop_replication_slot('" + e.name + "')", e.checkpoint, "walbust setup"}
	e.pubMentions("exit message", msg, wants...)
	t.Logf("exit code %d, message:\n%s", code, msg)

	// Restarted with the publication still missing: the same diagnosis,
	// from preflight.
	out, code := e.opsRunUntilExit(time.Minute)
	if code == 0 {
		t.Fatalf("walbust run exited 0 without its publication:\n%s", out)
	}
	e.pubMentions("preflight message", lastLine(out), wants...)

	// The publication alone does not help: the slot still fails at the drop.
	if out, code := e.walbust("setup"); code != 0 {
		t.Fatalf("walbust setup exited %d:\n%s", code, out)
	}
	out, code = e.opsRunUntilExit(time.Minute)
	if code == 0 {
		t.Fatalf("walbust run exited 0 on a slot that cannot decode past the drop:\n%s", out)
	}
	e.pubMentions("message after re-creating the publication", lastLine(out), wants...)

	// The fix as the message gives it.
	e.pubDropSlotWhenFree()
	if err := os.Remove(e.checkpoint); err != nil {
		t.Fatal(err)
	}
	if out, code := e.walbust("setup"); code != 0 {
		t.Fatalf("walbust setup exited %d:\n%s", code, out)
	}
	e.start()
	e.cache("product:3")
	e.exec("UPDATE products SET price_cents = price_cents + 1 WHERE id = 3")
	e.waitGone("product:3")
}

// TestDroppedPublicationResync: the same drop with on_slot_loss: resync.
// While the publication is missing walbust keeps running, not ready, and
// says why and what to do; once `walbust setup` re-creates it, walbust
// re-creates the slot, applies every table's on_truncate rules (the gap is
// unknowable), counts the resync, and streams again.
func TestDroppedPublicationResync(t *testing.T) {
	e := newEnv(t, envOptions{seed: defaultSeed, noStart: true})
	e.opsWriteConfig(opsConfig{extra: []string{"on_slot_loss: resync"}})
	base := e.opsStartServing()
	e.fence()

	offset := e.opsLogSize()
	e.exec("DROP PUBLICATION " + e.name)
	// A write no slot can decode now, and caches around it.
	e.exec("UPDATE products SET price_cents = price_cents + 1 WHERE id = 2")
	covered := []string{"product:2", "category:3:products", "category:1"}
	unrelated := []string{"session:abc"}
	e.cache(append(covered, unrelated...)...)

	waiting := e.regWaitLog(offset, `.*waiting for the publication.*`, publicationTimeout)
	e.pubMentions("waiting line", waiting, `does not exist`, "run `walbust setup`")
	e.assertRunning()
	if code, body, err := opsGet(base + "/readyz"); err != nil || code != http.StatusServiceUnavailable {
		t.Errorf("/readyz while the publication is missing: %d %q (err %v), want 503", code, body, err)
	}
	// Nothing is resynced before the publication is back: a slot made now
	// would fail the same way.
	e.assertPresent(covered...)

	if out, code := e.walbust("setup"); code != 0 {
		t.Fatalf("walbust setup exited %d:\n%s", code, out)
	}
	e.regWaitLog(offset, `"msg":"resync complete"`, publicationTimeout)
	e.regWaitLog(offset, `"msg":"streaming"`, publicationTimeout)
	if lines := e.regLogLines(offset, "replication slot lost; resyncing", "publication dropped"); len(lines) == 0 {
		e.t.Errorf("the resync was not logged with its cause (a dropped publication)")
	}
	e.waitGone(covered...)
	e.assertPresent(unrelated...)
	if v := opsScrapeMetrics(t, base).val("walbust_slot_resyncs_total"); v != 1 {
		t.Errorf("walbust_slot_resyncs_total = %v, want 1", v)
	}
	e.cache("product:3")
	e.exec("UPDATE products SET price_cents = price_cents + 1 WHERE id = 3")
	e.waitGone("product:3")
	e.assertRunning()
}

// pubWaitExit waits for `walbust run` to exit by itself and returns its code.
func (e *env) pubWaitExit(timeout time.Duration) int {
	e.t.Helper()
	select {
	case <-e.procDone:
	case <-time.After(timeout):
		e.t.Fatalf("walbust still running %v later, want it to exit", timeout)
	}
	code := e.proc.ProcessState.ExitCode()
	e.proc = nil
	return code
}

func (e *env) pubMentions(what, text string, wants ...string) {
	e.t.Helper()
	for _, w := range wants {
		if !strings.Contains(text, w) {
			e.t.Errorf("the %s does not mention %q:\n%s", what, w, text)
		}
	}
}

// pubDropSlotWhenFree drops the test's slot once the walsender of the run that
// just exited has let go of it.
func (e *env) pubDropSlotWhenFree() {
	e.t.Helper()
	deadline := time.Now().Add(stopTimeout)
	for {
		_, err := e.db.Exec(e.ctx, "SELECT pg_drop_replication_slot($1)", e.name)
		if err == nil {
			return
		}
		if !strings.Contains(err.Error(), "is active") || time.Now().After(deadline) {
			e.t.Fatalf("drop slot %s: %v", e.name, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestDroppedPublicationWhileStopped: the publication is dropped while
// walbust is stopped (on_slot_loss: resync). At start walbust sees it
// missing behind a checkpoint, waits not ready (and a SIGTERM then is a
// clean stop), and once `walbust setup` re-creates it, resyncs before
// streaming.
func TestDroppedPublicationWhileStopped(t *testing.T) {
	e := newEnv(t, envOptions{seed: defaultSeed, noStart: true})
	e.opsWriteConfig(opsConfig{extra: []string{"on_slot_loss: resync"}})
	e.start()
	e.fence()
	e.stop()
	e.exec("DROP PUBLICATION " + e.name)
	e.exec("UPDATE products SET price_cents = price_cents + 1 WHERE id = 2")
	covered := []string{"product:2", "category:3:products"}
	e.cache(append(covered, "session:abc")...)

	offset := e.opsLogSize()
	e.launch(nil, nil)
	e.regWaitLog(offset, `waiting for the publication`, publicationTimeout)
	e.assertRunning()
	e.stop() // requires exit 0

	offset = e.opsLogSize()
	e.launch(nil, nil)
	e.regWaitLog(offset, `waiting for the publication`, publicationTimeout)
	e.assertPresent(covered...)
	if out, code := e.walbust("setup"); code != 0 {
		t.Fatalf("walbust setup exited %d:\n%s", code, out)
	}
	e.regWaitLog(offset, `"msg":"resync complete"`, publicationTimeout)
	e.regWaitLog(offset, `"msg":"streaming"`, publicationTimeout)
	e.waitGone(covered...)
	e.assertPresent("session:abc")
	e.cache("product:3")
	e.exec("UPDATE products SET price_cents = price_cents + 1 WHERE id = 3")
	e.waitGone("product:3")
}
