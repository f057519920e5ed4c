package protocol

import _ "embed" // the scripts' sources are the files in lua/

// The Lua scripts of the protocol, to be run with EVAL/EVALSHA on one key
// each (so they work on Redis Cluster too). Their sources are the files in
// lua/, embedded here; readers in other languages load those same files
// verbatim, so they are the one source of the scripts. Each file is
// self-contained and starts with a comment saying what KEYS, ARGV and the
// reply are. The Go side loads them with redis.NewScript.
//
// Each script treats a key holding another type than string as follows:
// FenceScript replaces it, LeaseScript fails with a WRONGTYPE error,
// CASScript fails the comparison (returns 0).
//
// They are variables because go:embed cannot initialise constants; do not
// assign to them.

// FenceScript writes a fresh tombstone into KEYS[1], whatever the key
// held, with a TTL of ARGV[3] milliseconds:
//
//	KEYS[1] = key, ARGV[1] = commit LSN (decimal), ARGV[2] = token, ARGV[3] = TTL in ms
//	returns 1
//
// The tombstone's LSN is the larger of ARGV[1] and the LSN of the
// tombstone or lease the key held, so a replayed or reordered fence never
// lowers the LSN a replica-aware reader waits for; the token is always the
// new one, so every fill that observed the key before fails.
//
//go:embed lua/fence.lua
var FenceScript string

// LeaseScript is a reader's observation of a key it missed on, made
// atomic: a tombstone, an absent key or a foreign string becomes a lease
// owned by the caller; a value or another reader's lease is returned as is.
//
//	KEYS[1] = key, ARGV[1] = the reader's token, ARGV[2] = TTL in ms of a lease over an absent key
//	returns {1, lease, ttl_ms}   acquired: the key now holds lease
//	        {0, content, pttl}   not acquired: the key holds a value or another lease
//
// A lease over a tombstone keeps the tombstone's LSN and its remaining TTL,
// so a lease never outlives the fence it replaced. A lease over an absent
// key has LSN 0 and the TTL ARGV[2].
//
//go:embed lua/lease.lua
var LeaseScript string

// CASScript is the conditional fill: it sets KEYS[1] to ARGV[2] only if
// the key still holds exactly ARGV[1], the content the caller observed (its
// lease, another reader's lease, or a value being revalidated). Because
// every stored form carries a unique token, equality means nothing
// happened to the key since the observation: no fence, no re-fence, no
// expiry, no other fill.
//
//	KEYS[1] = key, ARGV[1] = expected content, ARGV[2] = new content, ARGV[3] = TTL in ms, or 0 to keep the key's TTL
//	returns 1 if set, 0 if the key had changed
//
//go:embed lua/cas.lua
var CASScript string
