package retry

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestBackoffNext(t *testing.T) {
	const ms = time.Millisecond
	type bounds struct{ lo, hi time.Duration }
	tests := []struct {
		name string
		b    Backoff
		want []bounds
	}{
		{"doubles to the cap", Backoff{Initial: 500 * ms, Max: 2 * time.Second},
			[]bounds{{500 * ms, 500 * ms}, {time.Second, time.Second}, {2 * time.Second, 2 * time.Second}, {2 * time.Second, 2 * time.Second}}},
		{"equal jitter stays in the upper half", Backoff{Initial: 100 * ms, Max: 400 * ms, Jitter: Equal},
			[]bounds{{50 * ms, 100 * ms}, {100 * ms, 200 * ms}, {200 * ms, 400 * ms}, {200 * ms, 400 * ms}}},
		{"full jitter reaches down to 0", Backoff{Initial: 100 * ms, Max: 200 * ms, Jitter: Full},
			[]bounds{{0, 100 * ms}, {0, 200 * ms}, {0, 200 * ms}}},
		{"factor 1.5, truncated like integer arithmetic", Backoff{Initial: 5 * ms, Max: 50 * ms, Factor: 1.5},
			[]bounds{{5 * ms, 5 * ms}, {7500 * time.Microsecond, 7500 * time.Microsecond}, {11250 * time.Microsecond, 11250 * time.Microsecond},
				{16875 * time.Microsecond, 16875 * time.Microsecond}, {25312500, 25312500}, {37968750, 37968750}, {50 * ms, 50 * ms}, {50 * ms, 50 * ms}}},
		{"a cap below Initial applies from the second delay", Backoff{Initial: 50 * ms, Max: 10 * ms},
			[]bounds{{50 * ms, 50 * ms}, {10 * ms, 10 * ms}, {10 * ms, 10 * ms}}},
		{"no cap", Backoff{Initial: time.Second},
			[]bounds{{time.Second, time.Second}, {2 * time.Second, 2 * time.Second}, {4 * time.Second, 4 * time.Second}}},
		{"zero value never waits", Backoff{Jitter: Equal}, []bounds{{0, 0}, {0, 0}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for round := range 50 { // jitter is random: sample it
				b := tt.b
				for i, w := range tt.want {
					if d := b.Next(); d < w.lo || d > w.hi {
						t.Fatalf("round %d: delay %d = %v, want within [%v, %v]", round, i+1, d, w.lo, w.hi)
					}
				}
			}
		})
	}
}

func TestBackoffNeverOverflows(t *testing.T) {
	b := Backoff{Initial: time.Hour}
	prev := time.Duration(0)
	for range 100 {
		d := b.Next()
		if d < prev {
			t.Fatalf("delay %v after %v: overflowed", d, prev)
		}
		prev = d
	}
}

func TestBackoffReset(t *testing.T) {
	b := Backoff{Initial: time.Second, Max: 10 * time.Second}
	for range 5 {
		b.Next()
	}
	if d := b.Next(); d != 10*time.Second {
		t.Fatalf("before Reset: %v, want the cap", d)
	}
	b.Reset()
	if d := b.Next(); d != time.Second {
		t.Fatalf("after Reset: %v, want Initial", d)
	}
	if d := b.Next(); d != 2*time.Second {
		t.Fatalf("second after Reset: %v, want it growing again", d)
	}
}

func TestSleep(t *testing.T) {
	if err := Sleep(context.Background(), time.Millisecond); err != nil {
		t.Fatalf("Sleep: %v", err)
	}
	if err := Sleep(context.Background(), 0); err != nil {
		t.Fatalf("Sleep(0): %v", err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	start := time.Now()
	if err := Sleep(ctx, time.Hour); !errors.Is(err, context.Canceled) {
		t.Fatalf("Sleep on a cancelled ctx: %v, want context.Canceled", err)
	}
	if err := Sleep(ctx, 0); !errors.Is(err, context.Canceled) {
		t.Fatalf("Sleep(0) on a cancelled ctx: %v, want context.Canceled", err)
	}

	ctx, cancel = context.WithTimeout(context.Background(), 2*time.Millisecond)
	defer cancel()
	if err := Sleep(ctx, time.Hour); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Sleep past the deadline: %v, want context.DeadlineExceeded", err)
	}
	if took := time.Since(start); took > time.Second {
		t.Fatalf("Sleep returned after %v, not when ctx ended", took)
	}
}
