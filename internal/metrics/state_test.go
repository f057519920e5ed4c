package metrics

import (
	"errors"
	"strings"
	"testing"
)

func TestReadinessFollowsBatchesNotPings(t *testing.T) {
	m := New("test", "slot")
	m.Connected(true)
	m.PingResult(nil)
	if ok, why, _ := m.ready(); !ok {
		t.Fatalf("not ready after streaming and a ping: %s", why)
	}
	m.RedisResult(errors.New("NOPERM this user has no permissions to run the 'unlink' command"), false)
	m.PingResult(nil) // Redis answers PING while it refuses UNLINK
	if ok, why, _ := m.ready(); ok || !strings.Contains(why, "NOPERM") {
		t.Fatalf("ready = %v (%q) after a refused batch and a ping that answered; want not ready naming NOPERM", ok, why)
	}
	m.RedisResult(nil, false)
	if ok, why, _ := m.ready(); !ok {
		t.Fatalf("not ready after a batch went through: %s", why)
	}
	m.PingResult(errors.New("connection refused"))
	if ok, _, _ := m.ready(); ok {
		t.Fatal("ready after a failed ping")
	}
	m.PingResult(nil)
	if ok, why, _ := m.ready(); !ok {
		t.Fatalf("a ping that answers after a failed ping (no batch failing) should make walbust ready: %s", why)
	}
}

func TestStallsNameTheirCauseAndSince(t *testing.T) {
	m := New("test", "slot")
	m.Connected(true)
	m.RedisResult(nil, false)
	m.Stalled("lookup", errors.New("permission denied for table categories"))
	m.Stalled("checkpoint", errors.New("no space left on device"))
	ok, why, since := m.ready()
	if ok || since.IsZero() || !strings.Contains(why, "lookup: permission denied") || !strings.Contains(why, "checkpoint: no space") {
		t.Fatalf("ready() = %v, %q, %v; want not ready naming both stalls, with a time", ok, why, since)
	}
	st := m.Snapshot()
	if len(st.Stalls) != 2 || st.Stalls[0].Cause != "checkpoint" || st.NotReadySince.IsZero() {
		t.Errorf("Snapshot stalls = %+v since %v", st.Stalls, st.NotReadySince)
	}
	m.Recovered("lookup")
	m.Recovered("checkpoint")
	if ok, why, _ := m.ready(); !ok {
		t.Errorf("not ready after every stall recovered: %s", why)
	}
}
