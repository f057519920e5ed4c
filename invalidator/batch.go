package invalidator

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// waitTimeout bounds one WAIT for replica acknowledgements; a batch whose
// replicas do not answer in time is retried like any failed batch.
const waitTimeout = time.Second

// batch is one attempt's commands. Each key's commands go to the pipeline
// that reaches its master: the one pipeline (go-redis splits a cluster
// pipeline per node and follows MOVED and ASK), or, in cluster mode with
// WaitReplicas, one pipeline per master so that each can end in a WAIT on
// the connection that carried the writes.
type batch struct {
	iv        *Invalidator
	pipe      redis.Pipeliner                   // nil when perMaster is used
	perMaster map[*redis.Client]redis.Pipeliner // cluster with WaitReplicas
	keys      []string                          // UNLINK arguments (standalone, sentinel)
	bySlot    map[uint16][]string               // UNLINK arguments per slot (cluster: no CROSSSLOT)
	moves     []move                            // cluster: stale keys whose stale copy is in another slot
	token     string                            // written into the tombstones of this attempt
}

// move is a stale rollover that cannot be one script: the key and its
// stale copy hash to different slots, possibly different masters.
type move struct {
	key, to string
	ttl     time.Duration
}

func (iv *Invalidator) newBatch() *batch {
	b := &batch{iv: iv}
	if iv.cluster != nil {
		b.bySlot = map[uint16][]string{}
		if iv.opts.WaitReplicas > 0 {
			b.perMaster = map[*redis.Client]redis.Pipeliner{}
			return b
		}
	}
	b.pipe = iv.client.Pipeline()
	return b
}

// pipeFor returns the pipeline for commands on key.
func (b *batch) pipeFor(ctx context.Context, key string) (redis.Pipeliner, error) {
	if b.perMaster == nil {
		return b.pipe, nil
	}
	master, err := b.iv.cluster.MasterForKey(ctx, key)
	if err != nil {
		return nil, fmt.Errorf("find the master of a key: %w", err)
	}
	p := b.perMaster[master]
	if p == nil {
		p = master.Pipeline()
		b.perMaster[master] = p
	}
	return p, nil
}

// unlink queues UNLINK key, in commands of at most KeysPerCommand keys that
// all share a slot in cluster mode.
func (b *batch) unlink(ctx context.Context, key string) error {
	if b.bySlot == nil {
		b.keys = append(b.keys, key)
		if len(b.keys) == b.iv.opts.KeysPerCommand {
			b.pipe.Unlink(ctx, b.keys...)
			b.keys = b.keys[:0]
		}
		return nil
	}
	slot := keySlot(key)
	keys := append(b.bySlot[slot], key)
	if len(keys) < b.iv.opts.KeysPerCommand {
		b.bySlot[slot] = keys
		return nil
	}
	delete(b.bySlot, slot)
	return b.unlinkSlot(ctx, keys)
}

func (b *batch) unlinkSlot(ctx context.Context, keys []string) error {
	pipe, err := b.pipeFor(ctx, keys[0])
	if err != nil {
		return err
	}
	pipe.Unlink(ctx, keys...)
	return nil
}

func (b *batch) flushUnlinks(ctx context.Context) error {
	if len(b.keys) > 0 {
		b.pipe.Unlink(ctx, b.keys...)
		b.keys = b.keys[:0]
	}
	for slot, keys := range b.bySlot {
		if err := b.unlinkSlot(ctx, keys); err != nil {
			return err
		}
		delete(b.bySlot, slot)
	}
	return nil
}

// exec sends everything queued and returns nil only when Redis (and, with
// WaitReplicas, that many replicas of each master) acknowledged all of it.
func (b *batch) exec(ctx context.Context) error {
	if err := b.flushUnlinks(ctx); err != nil {
		return err
	}
	if b.perMaster == nil {
		if err := b.iv.execWaiting(ctx, b.pipe); err != nil {
			return err
		}
	} else {
		var wg sync.WaitGroup
		errs := make([]error, 0, len(b.perMaster))
		var mu sync.Mutex
		for _, pipe := range b.perMaster {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := b.iv.execWaiting(ctx, pipe); err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			return err
		}
	}
	if len(b.moves) > 0 {
		return b.iv.applyMoves(ctx, b.moves)
	}
	return nil
}

// execWaiting runs pipe, ending it with WAIT when replicas must confirm.
func (iv *Invalidator) execWaiting(ctx context.Context, pipe redis.Pipeliner) error {
	if pipe.Len() == 0 {
		return nil
	}
	var wait *redis.Cmd
	if n := iv.opts.WaitReplicas; n > 0 {
		wait = pipe.Do(ctx, "wait", n, waitTimeout.Milliseconds())
	}
	if err := execPipeline(ctx, pipe); err != nil {
		return err
	}
	if wait != nil {
		acked, err := wait.Int64()
		if err != nil {
			return fmt.Errorf("redis WAIT: %w", err)
		}
		if acked < int64(iv.opts.WaitReplicas) {
			return fmt.Errorf("redis WAIT: %d of the %d replicas wait_replicas requires acknowledged the batch within %v: %w; "+
				"walbust holds the stream until enough replicas of this master are in sync (INFO replication), "+
				"or lower redis.wait_replicas, at the risk of losing acknowledged invalidations in a failover",
				acked, iv.opts.WaitReplicas, waitTimeout, ErrTooFewReplicas)
		}
	}
	return nil
}

// applyMoves does the stale rollover of keys whose stale copy is in
// another slot, in three acknowledged steps instead of one script: DUMP
// the live values, RESTORE them as stale copies with their TTL, then
// UNLINK the live keys. It is not atomic: a value cached between the DUMP
// and the UNLINK is removed without a stale copy (an invalidation too
// many, never one too few). Every step is idempotent, so a retry or a
// replay repeats it harmlessly; a key already gone has nothing to copy.
func (iv *Invalidator) applyMoves(ctx context.Context, moves []move) error {
	dump := iv.newBatch()
	dumps := make([]*redis.StringCmd, len(moves))
	for i, m := range moves {
		pipe, err := dump.pipeFor(ctx, m.key)
		if err != nil {
			return err
		}
		dumps[i] = pipe.Dump(ctx, m.key)
	}
	if err := dump.exec(ctx); err != nil {
		return err
	}
	restore := iv.newBatch()
	for i, m := range moves {
		payload, err := dumps[i].Result()
		if errors.Is(err, redis.Nil) {
			continue
		}
		if err != nil {
			return fmt.Errorf("redis DUMP: %w", err)
		}
		pipe, err := restore.pipeFor(ctx, m.to)
		if err != nil {
			return err
		}
		pipe.RestoreReplace(ctx, m.to, m.ttl, payload)
	}
	if err := restore.exec(ctx); err != nil {
		return err
	}
	// Every key, whatever its DUMP said: the live key must go.
	remove := iv.newBatch()
	for _, m := range moves {
		if err := remove.unlink(ctx, m.key); err != nil {
			return err
		}
	}
	return remove.exec(ctx)
}
