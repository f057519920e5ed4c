package invalidator

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/walbust/walbust/mapping"
	"github.com/walbust/walbust/protocol"
	"github.com/walbust/walbust/replication/wal"
)

// pipeRecorder records the commands of every pipeline the client sends.
type pipeRecorder struct {
	mu    sync.Mutex
	pipes [][]string
}

func (r *pipeRecorder) DialHook(next redis.DialHook) redis.DialHook { return next }
func (r *pipeRecorder) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		r.mu.Lock()
		r.pipes = append(r.pipes, []string{cmd.Name()})
		r.mu.Unlock()
		return next(ctx, cmd)
	}
}
func (r *pipeRecorder) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		var names []string
		for _, c := range cmds {
			names = append(names, c.Name())
		}
		r.mu.Lock()
		r.pipes = append(r.pipes, names)
		r.mu.Unlock()
		return next(ctx, cmds)
	}
}

// take returns what was recorded, without the connection setup (HELLO,
// CLIENT SETNAME) and the test's own reads.
func (r *pipeRecorder) take() [][]string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out [][]string
	for _, p := range r.pipes {
		if !slices.ContainsFunc(p, func(n string) bool { return n == "hello" || n == "client" || n == "get" }) {
			out = append(out, p)
		}
	}
	r.pipes = nil
	return out
}

// The watermark is written with every batch: in its pipeline, before the
// event, when the batch is one pipeline; after the scans with patterns;
// alone for an empty batch; and not for a chunk that is not the last.
func TestWatermarkWrittenWithBatch(t *testing.T) {
	r := testRedis(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rdb := r.Client()
	defer rdb.Close()
	key := protocol.AppliedKey("test_slot")
	iv, err := New(Options{URL: r.URL(), EventsChannel: "events", Watermark: key})
	if err != nil {
		t.Fatal(err)
	}
	defer iv.Close()
	if err := iv.loadScripts(ctx); err != nil {
		t.Fatal(err)
	}
	rec := &pipeRecorder{}
	iv.client.AddHook(rec)
	want := func(lsn wal.LSN) {
		t.Helper()
		got, found, err := iv.Watermark(ctx)
		if err != nil || !found || got != lsn {
			t.Fatalf("watermark %s (found %v, %v), want %s", got, found, err, lsn)
		}
		if v := rdb.Get(ctx, key).Val(); v != lsn.String() {
			t.Fatalf("key %s holds %q, want %q", key, v, lsn.String())
		}
	}
	keys := []mapping.Invalidation{{Action: mapping.Delete, Key: "a:1"}}

	if _, err := iv.ApplyBatch(ctx, 0x16B3748, keys); err != nil {
		t.Fatal(err)
	}
	want(0x16B3748)
	if p := rec.take(); len(p) != 1 || !slices.Equal(p[0], []string{"unlink", "evalsha", "publish"}) {
		t.Errorf("commands %q, want one pipeline: unlink, evalsha (raise.lua: the watermark), publish", p)
	}

	if _, err := iv.ApplyBatch(ctx, 0x16B4000, nil); err != nil {
		t.Fatal(err)
	}
	want(0x16B4000)
	if p := rec.take(); len(p) != 1 || !slices.Equal(p[0], []string{"evalsha"}) {
		t.Errorf("commands %q for an empty batch, want the watermark's evalsha alone", p)
	}

	withPattern := append(slices.Clone(keys), mapping.Invalidation{Action: mapping.Delete, Key: "s:*", Pattern: true})
	if _, err := iv.ApplyBatch(ctx, 0x16B5000, withPattern); err != nil {
		t.Fatal(err)
	}
	want(0x16B5000)
	p := rec.take()
	var flat []string
	for _, c := range p {
		flat = append(flat, c...)
	}
	if i, j, k := slices.Index(flat, "scan"), slices.Index(flat, "evalsha"), slices.Index(flat, "publish"); i < 0 || j < i || k < j {
		t.Errorf("commands %q: want the watermark after the scan and before the event", p)
	}

	if _, err := iv.ApplyChunk(ctx, 0x16B6000, keys); err != nil {
		t.Fatal(err)
	}
	want(0x16B5000)

	rdb.Set(ctx, key, "garbage", 0)
	if _, _, err := iv.Watermark(ctx); !errors.Is(err, ErrBadWatermark) {
		t.Errorf("a watermark that is not an LSN: %v, want ErrBadWatermark", err)
	}
	if err := iv.SaveWatermark(ctx, 0x16B7000); err != nil {
		t.Fatal(err)
	}
	want(0x16B7000)
}

// With redis.wait_replicas, the watermark is in the pipeline WAIT ends.
func TestWatermarkBeforeWait(t *testing.T) {
	r := testRedis(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	iv, err := New(Options{URL: r.URL(), Watermark: protocol.AppliedKey("s"), WaitReplicas: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer iv.Close()
	if err := iv.loadScripts(ctx); err != nil {
		t.Fatal(err)
	}
	rec := &pipeRecorder{}
	iv.client.AddHook(rec)
	// No replica: WAIT fails the batch; what matters is what was sent.
	short, stop := context.WithTimeout(ctx, 300*time.Millisecond)
	defer stop()
	_, _ = iv.ApplyBatch(short, 0x100, []mapping.Invalidation{{Action: mapping.Delete, Key: "a:1"}})
	p := rec.take()
	if len(p) == 0 || !slices.Equal(p[0], []string{"unlink", "evalsha", "wait"}) {
		t.Errorf("commands %q, want unlink, evalsha, wait in one pipeline", p)
	}
}

// The positions never move backwards: a replayed batch, an idle save
// behind a batch, or another instance writing an older position leave
// them where they are; with SettleLater the settled position waits for
// Settle. A user without EVALSHA gets plain SETs, guarded in process.
func TestPositionsNeverLower(t *testing.T) {
	r := testRedis(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rdb := r.Client()
	defer rdb.Close()
	applied, settled := protocol.AppliedKey("mono"), protocol.SettledKey("mono")
	opts := Options{URL: r.URL(), Watermark: applied, Settled: settled}
	iv, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	defer iv.Close()
	other, err := New(opts) // a second instance: no shared process state
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	want := func(key string, lsn wal.LSN) {
		t.Helper()
		if v := rdb.Get(ctx, key).Val(); v != lsn.String() {
			t.Fatalf("%s holds %q, want %q", key, v, lsn.String())
		}
	}
	keys := []mapping.Invalidation{{Action: mapping.Delete, Key: "a:1"}}
	if _, err := iv.ApplyBatch(ctx, 0x1_0000_0200, keys); err != nil {
		t.Fatal(err)
	}
	want(applied, 0x1_0000_0200)
	want(settled, 0x1_0000_0200)
	if _, err := other.ApplyBatch(ctx, 0x0_FFFF_FFFF, keys); err != nil {
		t.Fatal(err)
	}
	if err := other.SaveWatermark(ctx, 0x1_0000_0100); err != nil {
		t.Fatal(err)
	}
	want(applied, 0x1_0000_0200)
	want(settled, 0x1_0000_0200)
	if _, err := iv.ApplyBatch(ctx, 0x1_0000_0300, nil); err != nil {
		t.Fatal(err)
	}
	want(applied, 0x1_0000_0300)

	later, err := New(Options{URL: r.URL(), Watermark: applied, Settled: settled, SettleLater: true})
	if err != nil {
		t.Fatal(err)
	}
	defer later.Close()
	if _, err := later.ApplyBatch(ctx, 0x1_0000_0400, keys); err != nil {
		t.Fatal(err)
	}
	want(applied, 0x1_0000_0400)
	want(settled, 0x1_0000_0300)
	if err := later.Settle(ctx, 0x1_0000_0400); err != nil {
		t.Fatal(err)
	}
	want(settled, 0x1_0000_0400)

	// A user that may not run EVALSHA: plain SET, never below what this
	// process wrote.
	if err := rdb.Do(ctx, "ACL", "SETUSER", "noscript", "on", ">pw", "~*", "&*", "+@all", "-evalsha", "-eval", "-script").Err(); err != nil {
		t.Fatal(err)
	}
	u := r.URL()
	u = strings.Replace(u, "redis://", "redis://noscript:pw@", 1)
	plain, err := New(Options{URL: u, Watermark: applied, Settled: settled})
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	if _, err := plain.ApplyBatch(ctx, 0x1_0000_0500, keys); err != nil {
		t.Fatal(err)
	}
	want(applied, 0x1_0000_0500)
	if _, err := plain.ApplyBatch(ctx, 0x1_0000_0450, keys); err != nil {
		t.Fatal(err)
	}
	want(applied, 0x1_0000_0500)
}
