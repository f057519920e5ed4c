package daemon

import (
	"errors"
	"fmt"

	"github.com/walbust/walbust/checkpoint"
	"github.com/walbust/walbust/invalidator"
	"github.com/walbust/walbust/replication/wal"
)

// The decisions about positions, apart from the queries that feed them so
// they can be tested without servers: the checkpoint file, the slot, the
// applied watermark in Redis and the server's WAL position (see
// identity.go and watermark.go for why they decide what they do).

// checkpointVerdict is what a checkpoint file says about this deployment.
type checkpointVerdict int

const (
	checkpointUsable    checkpointVerdict = iota
	checkpointElsewhere                   // another deployment's identity
	checkpointBeyondWAL                   // past this server's WAL: not from it
)

// judgeCheckpoint: a checkpoint that records another identity, or a
// position this server never wrote, is refused.
func judgeCheckpoint(c checkpoint.Checkpoint, found bool, here checkpoint.Identity, walFlush wal.LSN) checkpointVerdict {
	switch {
	case !found:
		return checkpointUsable
	case c.Identity != nil && *c.Identity != here:
		return checkpointElsewhere
	case c.LSN > walFlush:
		return checkpointBeyondWAL
	}
	return checkpointUsable
}

// slotVerdict is what the slot's confirmed position means at start.
type slotVerdict int

const (
	// slotResumes: nothing to decide; streaming resumes from the larger of
	// the slot's and the checkpoint's positions.
	slotResumes slotVerdict = iota
	// slotBeyondWAL: the slot confirmed a position this server never
	// wrote: a slot loss.
	slotBeyondWAL
	// slotRewriteIdentity: a checkpoint without an identity, accepted this
	// once and saved again, with one, at the larger position.
	slotRewriteIdentity
	// slotAheadOfCheckpoint: the watermark decides between a peer's
	// progress and a slot loss (see watermarkVerdict).
	slotAheadOfCheckpoint
)

// judgeSlot compares the slot's confirmed position with the server's WAL
// and the checkpoint, at start.
func judgeSlot(c checkpoint.Checkpoint, found bool, slotConfirmed, walFlush wal.LSN) slotVerdict {
	switch {
	case slotConfirmed > walFlush:
		return slotBeyondWAL
	case !found:
		return slotResumes
	case c.Identity == nil:
		return slotRewriteIdentity
	case slotConfirmed > c.LSN:
		return slotAheadOfCheckpoint
	}
	return slotResumes
}

// needsWatermarkOnReconnect: before a reconnect, an inactive slot past a
// checkpoint with an identity was moved by someone else meanwhile; the
// watermark says whom. An active slot is another instance's, streaming:
// its checkpoint moves with the slot and START_REPLICATION waits.
func needsWatermarkOnReconnect(c checkpoint.Checkpoint, slotActive bool, slotConfirmed wal.LSN) bool {
	return !slotActive && c.Identity != nil && slotConfirmed > c.LSN
}

// watermarkVerdict says whether the applied watermark (mark, found and err
// as Watermark returned them) covers the slot's confirmed position. An
// error means Redis did not answer: nothing is decided then. A watermark
// beyond walFlush (the server's WAL position) is another server's and is
// ignored. key names the watermark in the reasons.
func watermarkVerdict(key string, slotConfirmed, walFlush, mark wal.LSN, found bool, err error) (covered, error) {
	switch {
	case errors.Is(err, invalidator.ErrBadWatermark):
		return covered{why: err.Error()}, nil
	case err != nil:
		return covered{}, err
	case !found:
		return covered{why: fmt.Sprintf("and no walbust recorded an applied position in Redis (key %s is absent)", key)}, nil
	case mark > walFlush:
		return covered{mark: mark, why: fmt.Sprintf("and the applied position in Redis (key %s) is %s, beyond this server's WAL position %s, "+
			"so it is another server's", key, mark, walFlush)}, nil
	case slotConfirmed > mark:
		return covered{mark: mark, why: fmt.Sprintf("and past the applied position in Redis (key %s) at %s, so no walbust applied the changes after it", key, mark)}, nil
	}
	return covered{ok: true, mark: mark}, nil
}
