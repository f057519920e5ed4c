package protocol

// AppliedKey is the Redis key where walbust records how far it has applied
// slot's changes: the end LSN of the last batch Redis acknowledged, or the
// idle position confirmed past it, in pg_lsn text form ("16/B374D848",
// see wal.LSN.String). It is written before the position is checkpointed or
// confirmed to the slot, so every change up to it is in Redis. It only
// rises: walbust writes it with a script that keeps the larger LSN, so a
// replay or a second instance never lowers it. When idle it still
// advances, to the server's WAL end, at walbust's next status report
// (at most postgres.status_interval, 10s by default, and usually within a
// few hundred milliseconds). The slot name is the hash tag: one key, one
// Cluster slot.
//
// walbust reads it at start to tell a peer's progress (another instance
// with its own checkpoint file streamed further) from a re-created slot.
// Readers that want to read their own writes wait for SettledKey instead.
func AppliedKey(slot string) string {
	return "walbust:applied:{" + slot + "}"
}

// SettledKey is the Redis key of the settled position: every change up to
// it is in Redis and, when walbust watches read replicas (replicas:), was
// fenced again after every replica replayed it (or replica_wait_max
// passed), so a reader that fills from a replica cannot cache a row older
// than its own write. Without replicas it is written with AppliedKey, in
// the same pipeline, with the same value; with replicas it trails it by
// the replicas' replay lag. Same form and same monotonic write as
// AppliedKey. This is the position read-your-writes waits for
// (cacheaside.Client.WaitApplied, walbust wait).
func SettledKey(slot string) string {
	return "walbust:settled:{" + slot + "}"
}
