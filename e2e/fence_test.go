package e2e

import (
	"math/big"
	"testing"
	"time"

	"github.com/walbust/walbust/protocol"
	"github.com/walbust/walbust/replication/wal"
)

// action: fence replaces each key, and each key a pattern matches, with a
// tombstone carrying the commit LSN for fence_ttl (see package protocol).
func TestFenceAction(t *testing.T) {
	e := newEnv(t, envOptions{seed: defaultSeed, deps: `version: 1
tables:
  public.products:
    action: fence
    fence_ttl: 45s
    keys: ["product:{id}"]
    derived:
      - patterns: ["product-search:{category_id}:*"]
  public.categories:
    keys: ["category:{id}"]
`})
	other := protocol.NewToken()
	value := protocol.Envelope{SoftExpiry: time.Now().Add(time.Hour), Nonce: other, Payload: []byte("Dune")}.Encode()
	for _, k := range []string{"product:1", "product-search:1:page1", "product-search:3:page1"} {
		if err := e.rdb.Set(e.ctx, k, value, time.Hour).Err(); err != nil {
			t.Fatal(err)
		}
	}
	// A reader is filling product-search:1:page2 right now: its lease
	// must be fenced too, or its (possibly stale) fill would land.
	e.rdb.Set(e.ctx, "product-search:1:page2", protocol.Lease(0, other), 10*time.Second)

	before := e.regWALLSN()
	e.exec("UPDATE products SET price_cents = 1 WHERE id = 1")
	after := e.regWALLSN()
	eventually(t, invalidateTimeout, func() bool {
		v, _ := e.regGet("product:1")
		return protocol.Decode(v).Kind == protocol.KindTombstone
	}, func() string { v, _ := e.regGet("product:1"); return "product:1 = " + v })

	var lsn wal.LSN
	for _, k := range []string{"product:1", "product-search:1:page1", "product-search:1:page2"} {
		v, _ := e.regGet(k)
		f, err := protocol.ParseTombstone(v)
		if err != nil {
			t.Errorf("%s = %q, not a tombstone: %v", k, v, err)
			continue
		}
		if l := new(big.Int).SetUint64(uint64(f.LSN)); l.Cmp(before) < 0 || l.Cmp(after) >= 0 {
			t.Errorf("%s: tombstone LSN %d, want the commit LSN, in [%s, %s)", k, f.LSN, before, after)
		}
		if lsn != 0 && f.LSN != lsn {
			t.Errorf("%s: LSN %d differs from the other keys' %d", k, f.LSN, lsn)
		}
		lsn = f.LSN
		if ttl := e.rdb.PTTL(e.ctx, k).Val(); ttl <= 40*time.Second || ttl > 45*time.Second {
			t.Errorf("%s: TTL %v, want fence_ttl 45s", k, ttl)
		}
	}
	if v, _ := e.regGet("product-search:3:page1"); v != value {
		t.Errorf("product-search:3:page1 = %q: another category's listing was touched", v)
	}
}
