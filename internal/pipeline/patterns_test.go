package pipeline

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/walbust/walbust/internal/observe"
	"github.com/walbust/walbust/internal/pgoutputtest"
	"github.com/walbust/walbust/invalidator"
	"github.com/walbust/walbust/mapping"
	"github.com/walbust/walbust/replication"
	"github.com/walbust/walbust/replication/wal"
)

const passDeps = `version: 1
tables:
  public.items:
    keys: ["item:{id}"]
  public.searches:
    keys: ["owner:{id}"]
    derived:
      - patterns: ["search:{id}:*"]
`

// passLog is a PassApplier whose passes wait for a release each.
type passLog struct {
	callLog
	passes  chan []string // patterns of each pass, as it starts
	proceed chan error    // what the pass returns
	mu      sync.Mutex
	watermk wal.LSN
}

func (a *passLog) ApplyPass(ctx context.Context, lsn wal.LSN, pats []mapping.Invalidation) (invalidator.Stats, error) {
	var keys []string
	for _, p := range invalidator.CoalescePatterns(pats) {
		keys = append(keys, p.Key)
	}
	a.add(fmt.Sprintf("pass %s %v", lsn, keys))
	a.passes <- keys
	select {
	case err := <-a.proceed:
		if err != nil {
			return invalidator.Stats{}, err
		}
	case <-ctx.Done():
		return invalidator.Stats{}, ctx.Err()
	}
	a.mu.Lock()
	a.watermk = lsn
	a.mu.Unlock()
	return invalidator.Stats{Attempts: 1, Patterns: len(keys)}, nil
}

type passObserver struct {
	mu     sync.Mutex
	passes []observe.PatternPass
}

func (o *passObserver) BatchApplied(observe.Batch)        {}
func (o *passObserver) Refenced(int, time.Duration, bool) {}
func (o *passObserver) PatternPass(p observe.PatternPass) {
	o.mu.Lock()
	o.passes = append(o.passes, p)
	o.mu.Unlock()
}
func (o *passObserver) count() int { o.mu.Lock(); defer o.mu.Unlock(); return len(o.passes) }

// passTx is a one-row insert into items or searches, with its id.
type passTx struct {
	table string
	id    string
	end   wal.LSN
}

func passRun(t *testing.T, o Options, txs ...passTx) (*Pipeline, *fakeSource) {
	t.Helper()
	reg, err := mapping.Parse("deps.yaml", []byte(passDeps))
	if err != nil {
		t.Fatal(err)
	}
	o.Registry = reg
	if o.Store == nil {
		o.Store = &memStore{}
	}
	p := New(o)
	dec := replication.NewSinkDecoder(p.Begin)
	cols := []pgoutputtest.Column{{Name: "id", Key: true}}
	src := &fakeSource{}
	for i, spec := range txs {
		rel := map[string]uint32{"items": 1, "searches": 2}[spec.table]
		for _, m := range [][]byte{
			pgoutputtest.Relation(rel, "public", spec.table, 'd', cols),
			pgoutputtest.Begin(uint64(spec.end-8), time.Now(), uint32(i+1)),
			pgoutputtest.Insert(rel, pgoutputtest.Value(spec.id)),
			pgoutputtest.Commit(uint64(spec.end-8), uint64(spec.end), time.Now()),
		} {
			tx, _, err := dec.Decode(m)
			if err != nil {
				t.Fatal(err)
			}
			if tx != nil {
				src.txs = append(src.txs, tx)
			}
		}
	}
	return p, src
}

// Direct keys are applied while a pass runs, but nothing is acknowledged
// past a batch whose patterns are not applied; the next pass takes every
// pattern that arrived meanwhile, coalesced.
func TestPassAcknowledgementNeverPassesPendingPatterns(t *testing.T) {
	a := &passLog{callLog: *newCallLog(), passes: make(chan []string, 8), proceed: make(chan error)}
	obs := &passObserver{}
	step := make(chan struct{})
	p, src := passRun(t, Options{Applier: a, Observer: obs, MaxBatchTxs: 1},
		passTx{"searches", "1", 100},
		passTx{"items", "7", 200},
		passTx{"searches", "a*?[", 300},
		passTx{"searches", "1", 400},
		passTx{"items", "8", 500},
	)
	src.pause = func(i int) {
		if i == 1 {
			<-step
		}
	}
	stop, _ := started(t, p, src)
	first := <-a.passes
	if !slices.Equal(first, []string{"search:1:*"}) {
		t.Fatalf("first pass served %v", first)
	}
	close(step)
	// Everything else streams in while the pass is held: the direct keys
	// go to Redis at once, none is acknowledged.
	waitFor(t, func() bool {
		return slices.Contains(a.get(), "chunk 0/1F4 1")
	}, fmt.Sprintf("the direct key of the last batch was not applied while the pass ran: %v", a.get()))
	time.Sleep(150 * time.Millisecond) // a checkpoint save would have happened by now
	if got := acknowledged(p); got != 0 {
		t.Fatalf("acknowledged %s while the pass for 0/64 runs", got)
	}
	for _, c := range a.get() {
		if len(c) > 5 && c[:5] == "batch" {
			t.Errorf("%q: ApplyBatch (which records the watermark) ran while a pass was pending", c)
		}
	}
	a.proceed <- nil
	second := <-a.passes
	if want := []string{`search:a\*\?\[:*`, "search:1:*"}; !slices.Equal(second, want) {
		t.Errorf("second pass served %v, want %v (coalesced, escaped)", second, want)
	}
	waitFor(t, func() bool { return acknowledged(p) == 100 }, "the batch the first pass covered was not acknowledged")
	time.Sleep(150 * time.Millisecond)
	if got := acknowledged(p); got != 100 {
		t.Fatalf("acknowledged %s while the second pass runs", got)
	}
	a.proceed <- nil
	waitFor(t, func() bool { return acknowledged(p) == 500 }, "not acknowledged after the second pass")
	a.mu.Lock()
	if a.watermk != 500 {
		t.Errorf("the pass recorded %s as applied, want 0/1F4", a.watermk)
	}
	a.mu.Unlock()
	if n := obs.count(); n != 2 {
		t.Errorf("%d passes observed, want 2", n)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}

// A pass that fails (its retries ended with the context) is not
// acknowledged, nor is anything after it.
func TestPassFailureAcknowledgesNothing(t *testing.T) {
	a := &passLog{callLog: *newCallLog(), passes: make(chan []string, 8), proceed: make(chan error, 1)}
	p, src := passRun(t, Options{Applier: a, MaxBatchTxs: 1},
		passTx{"items", "1", 100},
		passTx{"searches", "2", 200},
		passTx{"items", "3", 300},
	)
	_, done := started(t, p, src)
	<-a.passes
	waitFor(t, func() bool { return acknowledged(p) == 100 }, "the batch before the pattern was not acknowledged")
	a.proceed <- context.DeadlineExceeded
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("Run returned nil after a failed pass")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after a failed pass")
	}
	if got := acknowledged(p); got != 100 {
		t.Errorf("acknowledged %s, want 0/64: the pass for 0/C8 failed", got)
	}
}

func TestPassDue(t *testing.T) {
	queued := []awaitingPass{{end: 1}}
	for _, tt := range []struct {
		name string
		s    patternStage
		want bool
	}{
		{"nothing queued", patternStage{}, false},
		{"a pass runs", patternStage{queued: queued, running: true}, false},
		{"batches wait, none runs", patternStage{queued: queued}, true},
	} {
		if got := tt.s.due(); got != tt.want {
			t.Errorf("%s: due = %t, want %t", tt.name, got, tt.want)
		}
	}
}
