package invalidator

import (
	"github.com/redis/go-redis/v9"

	"github.com/walbust/walbust/protocol"
)

// bumpScript raises a version key to ARGV[1], never lowering it, so replays
// and reordered batches cannot move a version backwards. Versions are
// compared as decimal strings (length first) to stay exact beyond 2^53.
var bumpScript = redis.NewScript(`
local cur = redis.call('GET', KEYS[1])
local new = ARGV[1]
if cur and (#cur > #new or (#cur == #new and cur >= new)) then
  return 0
end
redis.call('SET', KEYS[1], new)
return 1
`)

// staleScript moves the live value (of any type) to the stale key with a
// TTL, atomically. A missing live key is not an error: it was already
// invalidated, or never cached.
var staleScript = redis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
redis.call('RENAME', KEYS[1], KEYS[2])
redis.call('PEXPIRE', KEYS[2], ARGV[1])
return 1
`)

// fenceScript writes a tombstone (protocol.FenceScript): atomic per key,
// whatever the key held, never lowering the LSN of a tombstone or lease
// already there, always with the batch's fresh token.
var fenceScript = redis.NewScript(protocol.FenceScript)

var scripts = []*redis.Script{bumpScript, staleScript, fenceScript}
