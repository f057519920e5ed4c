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

// passLog is a PassApplier whose passes each wait for their release.
type passLog struct {
	callLog
	passes  chan passStart // each pass, as it starts
	mu      sync.Mutex
	watermk wal.LSN
}

type passStart struct {
	lsn     wal.LSN
	keys    []string
	release chan error // what the pass returns
}

func (a *passLog) StartPass(ctx context.Context, lsn wal.LSN, pats []mapping.Invalidation) func() (invalidator.Stats, error) {
	var keys []string
	for _, p := range invalidator.CoalescePatterns(pats) {
		keys = append(keys, p.Key)
	}
	a.add(fmt.Sprintf("pass %s %v", lsn, keys))
	ps := passStart{lsn: lsn, keys: keys, release: make(chan error, 1)}
	a.passes <- ps
	return func() (invalidator.Stats, error) {
		select {
		case err := <-ps.release:
			if err != nil {
				return invalidator.Stats{}, err
			}
		case <-ctx.Done():
			return invalidator.Stats{}, ctx.Err()
		}
		a.mu.Lock()
		a.watermk = max(a.watermk, lsn)
		a.mu.Unlock()
		return invalidator.Stats{Attempts: 1, Patterns: len(keys)}, nil
	}
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

// Direct keys are applied while a pass runs, and later batches start
// passes of their own, but nothing is acknowledged past a batch whose
// patterns are not applied, even when later passes finish first.
func TestPassAcknowledgementNeverPassesPendingPatterns(t *testing.T) {
	a := &passLog{callLog: *newCallLog(), passes: make(chan passStart, 8)}
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
	if !slices.Equal(first.keys, []string{"search:1:*"}) || first.lsn != 100 {
		t.Fatalf("first pass served %v up to %s", first.keys, first.lsn)
	}
	close(step)
	// Everything else streams in while the first pass is held: the direct
	// keys go to Redis at once, the patterns in passes of their own, and
	// nothing is acknowledged.
	waitFor(t, func() bool {
		return slices.Contains(a.get(), "chunk 0/1F4 1")
	}, fmt.Sprintf("the direct key of the last batch was not applied while the pass ran: %v", a.get()))
	// Every later batch is in a pass: those with patterns in theirs, the
	// others in passes that only record their position in order.
	var later []passStart
	var served []string
	for len(later) == 0 || later[len(later)-1].lsn != 500 {
		select {
		case ps := <-a.passes:
			later = append(later, ps)
			served = append(served, ps.keys...)
		case <-time.After(10 * time.Second):
			t.Fatalf("the later batches never got a pass: %v", a.get())
		}
	}
	slices.Sort(served)
	if want := []string{"search:1:*", `search:a\*\?\[:*`}; !slices.Equal(served, want) {
		t.Errorf("the later passes served %q, want %q", served, want)
	}
	for _, c := range a.get() {
		if len(c) > 5 && c[:5] == "batch" {
			t.Errorf("%q: ApplyBatch (which records the watermark) ran while a pass was pending", c)
		}
	}
	// The later passes finish first: still nothing is acknowledged.
	for _, ps := range later {
		ps.release <- nil
	}
	time.Sleep(150 * time.Millisecond) // a checkpoint save would have happened by now
	if got := acknowledged(p); got != 0 {
		t.Fatalf("acknowledged %s while the pass for 0/64 runs", got)
	}
	first.release <- nil
	waitFor(t, func() bool { return acknowledged(p) == 500 }, "not acknowledged after every pass")
	if n := obs.count(); n != 1+len(later) {
		t.Errorf("%d passes observed, want %d", n, 1+len(later))
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}

// A pass that fails (its retries ended with the context) is not
// acknowledged, nor is anything after it.
func TestPassFailureAcknowledgesNothing(t *testing.T) {
	a := &passLog{callLog: *newCallLog(), passes: make(chan passStart, 8)}
	p, src := passRun(t, Options{Applier: a, MaxBatchTxs: 1},
		passTx{"items", "1", 100},
		passTx{"searches", "2", 200},
		passTx{"items", "3", 300},
	)
	_, done := started(t, p, src)
	ps := <-a.passes
	waitFor(t, func() bool { return acknowledged(p) == 100 }, "the batch before the pattern was not acknowledged")
	ps.release <- context.DeadlineExceeded
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
		{"batches wait, none runs", patternStage{queued: queued}, true},
		{"batches wait, a pass runs", patternStage{queued: queued, flights: []*flight{{}}}, true},
		{"batches wait, every pass slot taken", patternStage{queued: queued, flights: make([]*flight, maxPassesInFlight)}, false},
	} {
		if got := tt.s.due(); got != tt.want {
			t.Errorf("%s: due = %t, want %t", tt.name, got, tt.want)
		}
	}
}

func TestIsIndexedViaPass(t *testing.T) {
	indexed := &mapping.Template{Indexed: true}
	scanToo := &mapping.Template{Indexed: true, AlsoScan: true}
	for _, tt := range []struct {
		name string
		inv  mapping.Invalidation
		want bool
	}{
		{"a direct key", mapping.Invalidation{Key: "k"}, false},
		{"a scanned pattern", mapping.Invalidation{Key: "p:*", Pattern: true}, false},
		{"an indexed delete (inlined)", mapping.Invalidation{Key: "p:*", Pattern: true, Action: mapping.Delete, Template: indexed}, false},
		{"an indexed fence", mapping.Invalidation{Key: "p:*", Pattern: true, Action: mapping.Fence, Template: indexed}, true},
		{"an indexed delete also scanned", mapping.Invalidation{Key: "p:*", Pattern: true, Action: mapping.Delete, Template: scanToo}, true},
	} {
		if got := isIndexedViaPass(tt.inv); got != tt.want {
			t.Errorf("%s: %t, want %t", tt.name, got, tt.want)
		}
	}
}
