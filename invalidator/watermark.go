package invalidator

import (
	"context"
	"errors"
	"fmt"

	"github.com/redis/go-redis/v9"

	"github.com/walbust/walbust/replication/wal"
)

// The watermark (Options.Watermark, protocol.AppliedKey) is a plain SET,
// not a script that only raises it: the minimal ACL users have no
// EVALSHA, and one walbust streams a slot at a time (the slot admits one
// consumer), so writes come in order. A zombie instance that still writes
// an older position only lowers it, which makes the start check stricter
// (a peer's progress taken for a slot loss), never looser.

// SaveWatermark records lsn as the applied watermark, once, without
// retrying: it is for the idle position, which the caller confirms only
// when this succeeded.
func (iv *Invalidator) SaveWatermark(ctx context.Context, lsn wal.LSN) error {
	if iv.opts.Watermark == "" {
		return nil
	}
	return iv.setWatermark(ctx, lsn)
}

func (iv *Invalidator) setWatermark(ctx context.Context, lsn wal.LSN) error {
	if err := iv.client.Set(ctx, iv.opts.Watermark, lsn.String(), 0).Err(); err != nil {
		return fmt.Errorf("redis SET %s (the applied watermark): %w", iv.opts.Watermark, err)
	}
	return nil
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
	return wal.LSN(v), true, nil
}
