package main

import (
	"context"
	"fmt"
	"strconv"
	"time"
)

// memoryResult is part 4's second half: walbust's peak RSS while it
// handles one transaction that updates Rows rows.
type memoryResult struct {
	Rows     int          `json:"rows"`
	Variants []memVariant `json:"variants"`
}

type memVariant struct {
	Name          string  `json:"name"`
	Deps          string  `json:"deps"`
	UpdateSeconds float64 `json:"update_seconds"` // the UPDATE statement, to its commit
	ApplySeconds  float64 `json:"apply_seconds"`  // commit -> slot confirmed past it
	BaselineRSSMB float64 `json:"baseline_rss_mb"`
	PeakRSSMB     float64 `json:"peak_rss_mb"`
	KeysSeeded    int     `json:"keys_seeded"`
	KeysLeft      int64   `json:"keys_left"` // order keys still in Redis afterwards: must be 0
}

func runMemory(ctx context.Context, e *env) (*memoryResult, error) {
	sc := e.sc
	res := &memoryResult{Rows: sc.MemRows}
	if err := e.setup(ctx, liveSlot); err != nil {
		return nil, err
	}
	type variant struct{ name, deps, file string }
	variants := []variant{{"row keys (deps.yaml without on_truncate)", "deps.yaml", e.deps}}
	if sc.MemCollapse {
		variants = append(variants, variant{"collapsed (on_truncate patterns past max_tx_changes=100000)", "deps-collapse.yaml", e.depsCol})
	}
	keys := make([]string, sc.MemRows)
	for i := range keys {
		keys[i] = "order:" + strconv.Itoa(i+1)
	}
	for i, v := range variants {
		mv := memVariant{Name: v.name, Deps: v.deps, KeysSeeded: len(keys)}
		e.logf("part 4: one transaction updating %d rows, %s", sc.MemRows, v.name)
		if err := memoryVariant(ctx, e, i, v.file, keys, &mv); err != nil {
			return res, fmt.Errorf("part 4 %s: %w", v.name, err)
		}
		e.logf("part 4: %s: peak RSS %.0f MB (baseline %.0f MB), update %.1fs, applied %.1fs after commit, keys left %d",
			v.name, mv.PeakRSSMB, mv.BaselineRSSMB, mv.UpdateSeconds, mv.ApplySeconds, mv.KeysLeft)
		res.Variants = append(res.Variants, mv)
		if mv.KeysLeft != 0 {
			return res, fmt.Errorf("part 4 %s: %d of %d order keys still in Redis after walbust confirmed the transaction", v.name, mv.KeysLeft, len(keys))
		}
	}
	return res, nil
}

func memoryVariant(ctx context.Context, e *env, i int, deps string, keys []string, mv *memVariant) error {
	if err := e.flushRedis(ctx); err != nil {
		return err
	}
	if err := e.setKeys(ctx, keys); err != nil {
		return err
	}
	w, err := e.startWalbust(ctx, fmt.Sprintf("memory-%d", i+1), liveSlot, deps)
	if err != nil {
		return err
	}
	defer w.stop()
	if err := w.waitStreaming(ctx); err != nil {
		return err
	}
	base, err := w.peakRSS()
	if err != nil {
		return err
	}
	mv.BaselineRSSMB = float64(base) / 1024
	t0 := time.Now()
	tag, err := e.db.Exec(ctx, "UPDATE orders SET total = total + 1 WHERE id <= $1", e.sc.MemRows)
	if err != nil {
		return err
	}
	committed := time.Now()
	if tag.RowsAffected() != int64(e.sc.MemRows) {
		return fmt.Errorf("updated %d rows, want %d", tag.RowsAffected(), e.sc.MemRows)
	}
	mv.UpdateSeconds = committed.Sub(t0).Seconds()
	target, err := e.fence(ctx)
	if err != nil {
		return err
	}
	done, err := e.waitConfirmed(ctx, liveSlot, target, 30*time.Minute, 10*time.Millisecond, w)
	if err != nil {
		return err
	}
	mv.ApplySeconds = done.Sub(committed).Seconds()
	peak, err := w.peakRSS()
	if err != nil {
		return err
	}
	mv.PeakRSSMB = float64(peak) / 1024
	if err := w.stop(); err != nil {
		return err
	}
	mv.KeysLeft, err = e.countExisting(ctx, keys)
	return err
}
