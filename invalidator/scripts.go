package invalidator

import (
	_ "embed" // the scripts' sources are the files in lua/

	"github.com/redis/go-redis/v9"

	"github.com/walbust/walbust/protocol"
)

// The sources of walbust's own scripts (readers never run them, so they
// live here rather than in protocol/lua/). Each file starts with a comment
// saying what KEYS, ARGV and the reply are.
var (
	//go:embed lua/bump.lua
	bumpSource string
	//go:embed lua/stale.lua
	staleSource string
	//go:embed lua/raise.lua
	raiseSource string
	//go:embed lua/index_unlink.lua
	indexUnlinkSource string
)

// bumpScript raises a version key to ARGV[1], never lowering it, so replays
// and reordered batches cannot move a version backwards. Versions are
// compared as decimal strings (length first) to stay exact beyond 2^53.
var bumpScript = redis.NewScript(bumpSource)

// staleScript moves the live value (of any type) to the stale key with a
// TTL, atomically. A missing live key is not an error: it was already
// invalidated, or never cached.
var staleScript = redis.NewScript(staleSource)

// fenceScript writes a tombstone (protocol.FenceScript): atomic per key,
// whatever the key held, never lowering the LSN of a tombstone or lease
// already there, always with the batch's fresh token.
var fenceScript = redis.NewScript(protocol.FenceScript)

// raiseScript raises a position key (the applied and settled watermarks)
// to ARGV[1], never lowering it.
var raiseScript = redis.NewScript(raiseSource)

// indexUnlinkScript deletes an indexed family's members and its index in
// one step, for delete rules outside a cluster (see Inline).
var indexUnlinkScript = redis.NewScript(indexUnlinkSource)

var scripts = []*redis.Script{bumpScript, staleScript, fenceScript, raiseScript, indexDrainScript, indexUnlinkScript}
