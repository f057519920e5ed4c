package lookup

import (
	"context"
	"net"
	"testing"
)

// A failing lookup fails at once, counted once: the pipeline's retry is
// the only one, so the stall is reported from the first failure.
func TestLookupTriesOnce(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens there now: every connection is refused
	var failures int
	p, err := New(context.Background(), Options{URL: "postgres://walbust@" + addr + "/x?sslmode=disable&connect_timeout=5",
		OnError: func(error) { failures++ }})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if _, _, err := p.Lookup(context.Background(), "SELECT 1", nil); err == nil {
		t.Fatal("Lookup succeeded with nothing listening")
	}
	if failures != 1 {
		t.Errorf("OnError called %d times for one Lookup, want 1 (no retry inside the pool)", failures)
	}
}
