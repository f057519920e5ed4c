package invalidator

import (
	"context"
	"reflect"
	"testing"
	"time"

	"github.com/walbust/walbust/mapping"
	"github.com/walbust/walbust/protocol"
)

// ApplyBatch publishes what it applied, after applying it: within the
// batch's pipeline when it can, after the scans when there are patterns.
func TestApplyBatchPublishesAfterApplying(t *testing.T) {
	r := testRedis(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rdb := r.Client()
	defer rdb.Close()
	iv, err := New(Options{URL: r.URL(), EventsChannel: "events"})
	if err != nil {
		t.Fatal(err)
	}
	defer iv.Close()
	sub := rdb.Subscribe(ctx, "events")
	defer sub.Close()
	if _, err := sub.Receive(ctx); err != nil {
		t.Fatal(err)
	}

	for _, tt := range []struct {
		name     string
		invs     []mapping.Invalidation
		keys     []string
		patterns []string
	}{
		{"keys only", []mapping.Invalidation{{Action: mapping.Delete, Key: "a:1"}, {Action: mapping.Delete, Key: "a:2"}}, []string{"a:1", "a:2"}, nil},
		{"with a pattern", []mapping.Invalidation{{Action: mapping.Delete, Key: "b:1"}, {Action: mapping.Delete, Key: `s:\*:*`, Pattern: true}},
			[]string{"b:1"}, []string{`s:\*:*`}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			for _, k := range append(tt.keys, "s:*:page") {
				rdb.Set(ctx, k, "v", time.Hour)
			}
			if _, err := iv.ApplyBatch(ctx, 0x16B3748, tt.invs); err != nil {
				t.Fatal(err)
			}
			msg, err := sub.ReceiveMessage(ctx)
			if err != nil {
				t.Fatal(err)
			}
			ev, err := protocol.UnmarshalEvent([]byte(msg.Payload))
			if err != nil {
				t.Fatalf("event %q: %v", msg.Payload, err)
			}
			if ev.LSN != 0x16B3748 || !reflect.DeepEqual(ev.Keys, tt.keys) || !reflect.DeepEqual(ev.Patterns, tt.patterns) && len(tt.patterns) > 0 {
				t.Errorf("event %+v, want LSN 0/16B3748, keys %q, patterns %q", ev, tt.keys, tt.patterns)
			}
			for _, k := range tt.keys {
				if rdb.Exists(ctx, k).Val() != 0 {
					t.Errorf("%s still exists after its event", k)
				}
			}
			if len(tt.patterns) > 0 && rdb.Exists(ctx, "s:*:page").Val() != 0 {
				t.Error("the pattern's match still exists after the event")
			}
		})
	}
	// Plain Apply publishes nothing.
	if _, err := iv.Apply(ctx, []mapping.Invalidation{{Action: mapping.Delete, Key: "c:1"}}); err != nil {
		t.Fatal(err)
	}
	select {
	case msg := <-sub.Channel():
		t.Errorf("Apply published %q", msg.Payload)
	case <-time.After(200 * time.Millisecond):
	}
}
