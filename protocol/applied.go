package protocol

// AppliedKey is the Redis key where walbust records how far it has applied
// slot's changes: the end LSN of the last batch Redis acknowledged, or the
// idle position confirmed past it, in pg_lsn text form ("16/B374D848",
// see wal.LSN.String). It is written before the position is checkpointed or
// confirmed to the slot, so every change up to it is in Redis. The slot
// name is the hash tag: one key, one Cluster slot.
//
// walbust reads it at start to tell a peer's progress (another instance
// with its own checkpoint file streamed further) from a re-created slot.
// Readers may compare it with a commit LSN to know their write is
// reflected in Redis.
func AppliedKey(slot string) string {
	return "walbust:applied:{" + slot + "}"
}
