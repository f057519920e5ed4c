package invalidator

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/redis/go-redis/v9"

	"github.com/walbust/walbust/replication/wal"
)

// The positions walbust records in Redis (Options.Watermark, the applied
// watermark protocol.AppliedKey, and Options.Settled, protocol.SettledKey)
// only ever rise: they are written with raise.lua, which keeps the larger
// of the key's LSN and the new one, so a replay after a restart (which
// starts from the checkpoint, behind the watermark), an idle save racing a
// batch, or a zombie instance still finishing a batch after another took
// the slot over cannot move them backwards.
//
// A Redis user without EVALSHA (the minimal ACL line for delete-only
// deps.yaml) cannot run the script: on the first NOPERM walbust falls back
// to a plain SET, guarded in process (it never writes a position below
// the highest it wrote or read), and says so once. That still covers
// replays and the idle race, not a zombie instance.

// marks are the positions one attempt records (0: not).
type marks struct {
	applied, settled wal.LSN
}

func (m marks) none() bool { return m.applied == 0 && m.settled == 0 }

// positions tracks how the position keys are written.
type positions struct {
	mu    sync.Mutex
	plain bool               // the script is not permitted: plain SET
	floor map[string]wal.LSN // highest position written or read, per key
}

// SaveWatermark records lsn as the applied (and settled) position, once,
// without retrying: it is for the idle position, which the caller confirms
// only when this succeeded. Idle means every delivered transaction is
// acknowledged, re-fences included, so the settled position may move too.
func (iv *Invalidator) SaveWatermark(ctx context.Context, lsn wal.LSN) error {
	return iv.writeMarks(ctx, marks{applied: lsn, settled: lsn})
}

// Settle records lsn as the settled position (Options.Settled): with
// replicas, called once the batches up to lsn were fenced again after the
// replicas replayed them. Retried like a batch until ctx ends.
func (iv *Invalidator) Settle(ctx context.Context, lsn wal.LSN) error {
	if iv.opts.Settled == "" {
		return nil
	}
	_, err := iv.retrying(ctx, "settled position", 0, func(*Stats) error {
		return iv.writeMarks(ctx, marks{settled: lsn})
	})
	return err
}

// writeMarks writes m in one pipeline of its own.
func (iv *Invalidator) writeMarks(ctx context.Context, m marks) error {
	m = iv.enabledMarks(m)
	if m.none() {
		return nil
	}
	err := iv.sendMarks(ctx, m)
	if isNoScript(err) {
		if err = iv.loadScripts(ctx); err == nil {
			err = iv.sendMarks(ctx, m)
		}
	}
	return err
}

func (iv *Invalidator) sendMarks(ctx context.Context, m marks) error {
	pipe := iv.client.Pipeline()
	iv.queueMarks(ctx, pipe, m)
	if err := execPipeline(ctx, pipe); err != nil {
		if iv.markNoPerm(err) {
			return iv.sendMarks(ctx, m)
		}
		return fmt.Errorf("redis: write the applied position: %w", err)
	}
	iv.marked(m)
	return nil
}

// enabledMarks drops the positions that are not configured.
func (iv *Invalidator) enabledMarks(m marks) marks {
	if iv.opts.Watermark == "" {
		m.applied = 0
	}
	if iv.opts.Settled == "" {
		m.settled = 0
	}
	return m
}

// queueMarks adds the commands that raise m's positions to pipe.
func (iv *Invalidator) queueMarks(ctx context.Context, pipe redis.Pipeliner, m marks) {
	iv.pos.mu.Lock()
	plain := iv.pos.plain
	floor := iv.pos.floor
	iv.pos.mu.Unlock()
	for _, k := range []struct {
		key string
		lsn wal.LSN
	}{{iv.opts.Watermark, m.applied}, {iv.opts.Settled, m.settled}} {
		if k.lsn == 0 {
			continue
		}
		if !plain {
			raiseScript.EvalSha(ctx, pipe, []string{k.key}, k.lsn.String())
			continue
		}
		iv.pos.mu.Lock()
		below := k.lsn < floor[k.key]
		iv.pos.mu.Unlock()
		if !below {
			pipe.Set(ctx, k.key, k.lsn.String(), 0)
		}
	}
}

// marked records that m was written.
func (iv *Invalidator) marked(m marks) {
	iv.raiseFloor(iv.opts.Watermark, m.applied)
	iv.raiseFloor(iv.opts.Settled, m.settled)
}

func (iv *Invalidator) raiseFloor(key string, lsn wal.LSN) {
	if key == "" || lsn == 0 {
		return
	}
	iv.pos.mu.Lock()
	defer iv.pos.mu.Unlock()
	if iv.pos.floor == nil {
		iv.pos.floor = map[string]wal.LSN{}
	}
	iv.pos.floor[key] = max(iv.pos.floor[key], lsn)
}

// markNoPerm switches to plain SETs when err says the user may not run
// EVALSHA, and reports whether it did (the caller then tries again).
func (iv *Invalidator) markNoPerm(err error) bool {
	if !hasErrorPrefix(err, "NOPERM") {
		return false
	}
	iv.pos.mu.Lock()
	defer iv.pos.mu.Unlock()
	if iv.pos.plain {
		return false
	}
	iv.pos.plain = true
	iv.log.Warn("the redis user may not run EVALSHA: walbust writes its applied position with a plain SET, which a zombie instance " +
		"could lower; grant +evalsha +script|load to keep it monotonic across instances")
	return true
}

func hasErrorPrefix(err error, prefix string) bool {
	for err != nil {
		if redis.HasErrorPrefix(err, prefix) {
			return true
		}
		if joined, ok := err.(interface{ Unwrap() []error }); ok {
			for _, e := range joined.Unwrap() {
				if hasErrorPrefix(e, prefix) {
					return true
				}
			}
			return false
		}
		err = errors.Unwrap(err)
	}
	return false
}

// ErrBadWatermark: the watermark key holds something that is not an LSN.
var ErrBadWatermark = errors.New("applied watermark is not an LSN")

// Watermark reads the applied watermark; found is false when the key does
// not exist (no walbust with this version applied a batch yet).
func (iv *Invalidator) Watermark(ctx context.Context) (lsn wal.LSN, found bool, err error) {
	if iv.opts.Watermark == "" {
		return 0, false, nil
	}
	s, err := iv.client.Get(ctx, iv.opts.Watermark).Result()
	if errors.Is(err, redis.Nil) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("redis GET %s (the applied watermark): %w", iv.opts.Watermark, err)
	}
	v, err := wal.ParseLSN(s)
	if err != nil {
		return 0, false, fmt.Errorf("%w: key %s holds %.40q (%v); delete it, walbust writes it again with the next batch", ErrBadWatermark, iv.opts.Watermark, s, err)
	}
	iv.raiseFloor(iv.opts.Watermark, v)
	return v, true, nil
}
