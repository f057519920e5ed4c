// Package protocol is the wire contract between walbust and the services
// that read the cache: what walbust writes into a fenced key, how a reader
// turns that into a lease, how a value is wrapped, the Lua scripts that make
// every step atomic, and the events walbust publishes after each batch.
//
// Every stored form is a plain Redis string that starts with an ASCII
// prefix naming it and its version, so any language can tell them apart
// with a prefix test and split them on ':'. LSNs are unsigned 64-bit
// integers written in decimal without leading zeros ("0" is allowed);
// tokens are 16 to 64 lower-case hex digits (NewToken makes 32).
//
//	tombstone  wbfence:1:<lsn>:<token>                          written by walbust's fence action
//	lease      wblease:1:<lsn>:<token>                          a reader's claim to fill the key
//	value      wbval:1:<soft-expiry-ms>:<nonce>:<kind>:<payload> a filled value; kind v (value) or n (not found)
//
// One key is walbust's own bookkeeping: AppliedKey, how far a slot's
// changes are in Redis, an LSN in pg_lsn text form (X/Y).
//
// The Lua scripts are the files in protocol/lua/ (fence.lua, lease.lua,
// cas.lua), embedded as FenceScript, LeaseScript and CASScript. That
// directory is the one source: the Python and Node clients (clients/)
// package byte-identical copies made by their build step, and their tests
// fail when a copy differs from it or from testdata/lua.sha1, which lists
// each file's SHA1, the name EVALSHA knows the script by.
//
// The package depends on nothing but the standard library and the change
// model (replication/wal), so the daemon,
// the Go client (cacheaside) and tools can all import it.
package protocol
