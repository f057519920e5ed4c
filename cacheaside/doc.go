// Package cacheaside is the read side of walbust for Go services: a
// cache-aside Get that stays consistent with PostgreSQL when walbust fences
// the keys it reads (deps.yaml action: fence).
//
// A Get that misses (the key is absent, or walbust left a tombstone) turns
// what it observed into a lease with one atomic script, loads from the
// database, and fills the key with a compare-and-set on that lease. A
// fence that lands while the load runs replaces the lease, so the fill of
// a value read before the write fails instead of putting it back: the
// populate race is closed. The lease is also a lock: readers in other
// processes that find it wait briefly for the value instead of all going
// to the database (the stampede), then load themselves. In a process,
// concurrent Gets of one key share one load.
//
// Values carry a soft expiry (stale-while-revalidate), not-found results
// are cached for their own short TTL (walbust removes them when the row is
// inserted, since the key renders from the new row), TTLs get jitter, and
// an optional in-process L1 drops entries on walbust's events and empties
// itself whenever its subscription drops. The formats and scripts are in
// package protocol; README.md documents them for other languages.
package cacheaside
