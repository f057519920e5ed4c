package cacheaside

import (
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

func TestOptionsDefaults(t *testing.T) {
	o, err := Options{L1: &L1Options{}}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if o.TTL != 10*time.Minute || o.Jitter != 0.1 || o.NegativeTTL != 30*time.Second || o.LeaseTTL != 10*time.Second ||
		o.LeaseWait != 2*time.Second || o.LoadTimeout != 10*time.Second || o.FillMargin != 250*time.Millisecond ||
		o.FenceTTL != time.Minute || o.StaleWhileRevalidate != 0 {
		t.Errorf("defaults %+v", o)
	}
	if o.L1.Channel != "walbust:events" || o.L1.TTL != 5*time.Second || o.L1.MaxEntries != 10000 || o.L1.PingInterval != time.Second {
		t.Errorf("L1 defaults %+v", *o.L1)
	}
	for name, bad := range map[string]Options{
		"TTL":         {TTL: time.Microsecond},
		"Jitter":      {Jitter: 1},
		"SWR":         {StaleWhileRevalidate: -time.Second},
		"LeaseTTL":    {LeaseTTL: -time.Second},
		"FillMargin":  {FillMargin: -time.Second},
		"L1 TTL":      {L1: &L1Options{TTL: -1}},
		"L1 entries":  {L1: &L1Options{MaxEntries: -1}},
		"LoadTimeout": {LoadTimeout: -1},
	} {
		if _, err := bad.withDefaults(); err == nil {
			t.Errorf("%s: accepted %+v", name, bad)
		}
	}
	if _, err := New(nil, Options{}); err == nil {
		t.Error("New(nil) succeeded")
	}
	var rdb redis.UniversalClient = redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"})
	defer rdb.Close()
	c, err := New(rdb, Options{})
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	c.Close() // twice is fine
}

func TestJitter(t *testing.T) {
	lo, hi := time.Hour, time.Duration(0)
	for range 2000 {
		d := jitter(time.Hour, 0.1)
		lo, hi = min(lo, d), max(hi, d)
	}
	if lo < 54*time.Minute || hi > 66*time.Minute {
		t.Errorf("jitter range [%v, %v], want within 1h ± 10%%", lo, hi)
	}
	if hi-lo < 6*time.Minute {
		t.Errorf("jitter range [%v, %v] is too narrow to spread expiries", lo, hi)
	}
	if d := jitter(time.Hour, -1); d != time.Hour {
		t.Errorf("no jitter: %v", d)
	}
	if d := jitter(0, 0.5); d != time.Millisecond {
		t.Errorf("jitter(0) = %v, want the 1ms floor", d)
	}
}
