package main

import (
	"testing"
	"time"
)

func TestHistoryRequired(t *testing.T) {
	h := newHistory(1)
	t0 := time.Now()
	if got := h.required(1, t0, 0); got != 0 {
		t.Errorf("before any write: %d", got)
	}
	h.committed(1, 2, 200) // acknowledged out of order: 2 before 1
	h.committed(1, 1, 100)
	t1 := time.Now()
	time.Sleep(2 * time.Millisecond)
	h.committed(1, 3, 300)
	if got := h.required(1, t1, 0); got != 2 {
		t.Errorf("read begun after 1 and 2 were acknowledged must return at least 2, got %d", got)
	}
	if got := h.required(1, time.Now(), 0); got != 3 {
		t.Errorf("read begun after 3: %d", got)
	}
	if got := h.required(1, time.Now(), time.Hour); got != 0 {
		t.Errorf("with a window longer than the history nothing is required, got %d", got)
	}
}

func TestHistoryFencedBeforeVisible(t *testing.T) {
	h := newHistory(1)
	h.committed(1, 5, 1000) // the write of 5: its commit LSN is at least 1000
	h.committed(1, 6, 2000) // the write of 6: at least 2000
	h.loaded(1, 5, 1500)    // a load saw the fence of 5's commit, read 5: fine
	if h.fencedBeforeVisible(1, 5) {
		t.Error("a load that saw the fence of the write of 5 and read 5 is not the window")
	}
	h.loaded(1, 5, 2000) // a load saw the fence of 6's commit and still read 5
	if !h.fencedBeforeVisible(1, 5) {
		t.Error("a load that saw the tombstone of the write of 6 and read 5 is the window")
	}
	h.loaded(1, 6, 0) // loads over absent keys say nothing
	if h.fencedBeforeVisible(1, 6) || h.fencedBeforeVisible(1, 9) {
		t.Error("no write of 7 or 10: nothing to explain")
	}
}
