package mapping

import (
	"fmt"
	"time"

	"github.com/walbust/walbust/replication/wal"
)

// Action is what to do with a key.
type Action uint8

// Actions.
const (
	// Delete removes the key (UNLINK).
	Delete Action = iota + 1
	// Bump raises the key's version (stored at VersionKey) to the commit LSN,
	// never lowering it, so readers that put the version in their cache key
	// stop reading the old entry.
	Bump
	// Stale moves the value to StaleKey with a TTL and removes the live key,
	// so a reader whose refresh fails can serve the last good value.
	Stale
	// Fence replaces the key with a tombstone carrying the commit LSN and
	// a random token, for fence_ttl (see package protocol): a reader's fill
	// that began before the tombstone was written fails.
	Fence
	// Refresh writes the fresh value (with its commit LSN, compared and set
	// atomically) instead of removing the key; see refresh.go. It is an
	// action of derived rules, not of tables.
	Refresh

	maxAction = Refresh
)

func (a Action) String() string {
	switch a {
	case Delete:
		return "delete"
	case Bump:
		return "bump"
	case Stale:
		return "stale"
	case Fence:
		return "fence"
	case Refresh:
		return "refresh"
	}
	return "unknown"
}

// ParseAction parses an action name from deps.yaml.
func ParseAction(s string) (Action, error) {
	switch s {
	case "delete":
		return Delete, nil
	case "bump":
		return Bump, nil
	case "stale":
		return Stale, nil
	case "fence":
		return Fence, nil
	case "refresh":
		return Refresh, nil
	}
	return Delete, fmt.Errorf("unknown action %q (delete, bump, stale, fence)", s)
}

// Invalidation is one thing to do to Redis.
type Invalidation struct {
	Action Action
	// Key is the cache key, or a SCAN MATCH pattern when Pattern is set.
	Key     string
	Pattern bool
	// Version is the commit LSN a Bump raises the version to and a Fence
	// writes into its tombstone.
	Version wal.LSN
	// Aux derives the companion key: the version key for Bump, the stale
	// key for Stale.
	Aux KeyFormat
	// TTL is how long a Stale value or a Fence tombstone survives.
	TTL time.Duration

	Table    string    // the table whose change produced it
	Rule     *Rule     // the deps.yaml rule that produced it
	Template *Template // the template within the rule

	// Refresh is what a Refresh writes (see refresh.go); nil otherwise.
	Refresh *RefreshWrite
}
