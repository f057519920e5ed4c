package e2e

import (
	"math/big"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/walbust/walbust/checkpoint"
	"github.com/walbust/walbust/internal/throwaway"
	"github.com/walbust/walbust/protocol"
	"github.com/walbust/walbust/replication/wal"
)

// With a lagging replica, a fenced key is fenced a second time (same LSN,
// new token) only once the replica has replayed the commit, and the batch
// is acknowledged only then. Each fence is published on the events channel.
func TestRefenceAfterReplicaReplayed(t *testing.T) {
	const delay = 1500 * time.Millisecond
	e, replica := refenceEnv(t, delay)

	events := e.rdb.Subscribe(e.ctx, protocol.DefaultEventsChannel)
	t.Cleanup(func() { events.Close() })
	if _, err := events.Receive(e.ctx); err != nil { // the subscription confirmation
		t.Fatal(err)
	}
	offset := e.regLogOffset()
	e.regStartWith("--replica-urls", replica.URL(e.name), "--replica-wait-max", "30s")

	e.cache("product:1")
	before := e.regWALLSN()
	e.exec("UPDATE products SET price_cents = 1 WHERE id = 1")
	committed := time.Now()
	after := e.regWALLSN()

	var first protocol.Fence
	eventually(t, invalidateTimeout, func() bool {
		v, _ := e.regGet("product:1")
		f, err := protocol.ParseTombstone(v)
		first = f
		return err == nil
	}, func() string { v, _ := e.regGet("product:1"); return "product:1 = " + v + ", want a tombstone" })
	if lsn := new(big.Int).SetUint64(uint64(first.LSN)); lsn.Cmp(before) < 0 || lsn.Cmp(after) >= 0 {
		t.Errorf("tombstone LSN %d, want the commit's, in [%s, %s)", first.LSN, before, after)
	}
	store, err := checkpoint.Open(e.checkpoint)
	if err != nil {
		t.Fatal(err)
	}
	if cp, err := store.Load(); err != nil || wal.LSN(cp) > first.LSN {
		t.Errorf("checkpoint %s (%v) passed the commit %d while its re-fence waits for the replica", cp, err, first.LSN)
	}

	var second protocol.Fence
	eventually(t, delay+invalidateTimeout, func() bool {
		v, _ := e.regGet("product:1")
		f, err := protocol.ParseTombstone(v)
		second = f
		return err == nil && f.Token != first.Token
	}, func() string { v, _ := e.regGet("product:1"); return "product:1 = " + v + ", want a second tombstone" })
	if waited := time.Since(committed); waited < delay-200*time.Millisecond {
		t.Errorf("fenced again %v after the commit, before the replica could have replayed it (apply delay %v)", waited, delay)
	}
	if second.LSN != first.LSN {
		t.Errorf("second tombstone LSN %d, want the first's %d", second.LSN, first.LSN)
	}
	eventually(t, invalidateTimeout, func() bool {
		cp, err := store.Load()
		return err == nil && wal.LSN(cp) > first.LSN
	}, func() string {
		cp, err := store.Load()
		return "checkpoint " + cp.String() + " did not pass the commit after the re-fence: " + errString(err)
	})

	// Two events name product:1: the fence and the re-fence.
	var seen int
	deadline := time.After(invalidateTimeout)
	for seen < 2 {
		select {
		case msg := <-events.Channel():
			ev, err := protocol.UnmarshalEvent([]byte(msg.Payload))
			if err != nil {
				t.Fatalf("event %q: %v", msg.Payload, err)
			}
			if slices.Contains(ev.Keys, "product:1") {
				seen++
			}
		case <-deadline:
			t.Fatalf("%d events named product:1, want 2 (fence, re-fence)", seen)
		}
	}
	if n := e.regMetric(offset, `walbust_refences_total{reason="replayed"}`); n < 1 {
		t.Errorf(`walbust_refences_total{reason="replayed"} = %v, want at least 1`, n)
	}
}

func errString(err error) string {
	if err == nil {
		return "no error"
	}
	return err.Error()
}

// refenceEnv is an env with products fenced and a streaming replica that
// replays delay behind the primary; walbust is not started.
func refenceEnv(t *testing.T, delay time.Duration) (*env, *throwaway.Postgres) {
	t.Helper()
	e := newEnv(t, envOptions{seed: defaultSeed, noStart: true, deps: `version: 1
tables:
  public.products:
    action: fence
    keys: ["product:{id}"]
  public.categories:
    keys: ["category:{id}"]
`})
	dir, err := os.MkdirTemp("", "walbust-e2e-replica-")
	if err != nil {
		t.Fatal(err)
	}
	replica, err := throwaway.StartReplica(e.ctx, dir, pg, throwaway.WithSetting("recovery_min_apply_delay", delay.String()))
	if err != nil {
		os.RemoveAll(dir)
		t.Fatalf("start a replica: %v", err)
	}
	t.Cleanup(func() { replica.Close() })
	return e, replica
}
