package protocol

import (
	"errors"
	"fmt"
	"strings"

	"github.com/walbust/walbust/replication/wal"
)

// Prefixes of the stored forms. A string with none of them is not part of
// the protocol (a "foreign" value) and readers treat it as absent.
const (
	TombstonePrefix = "wbfence:1:"
	LeasePrefix     = "wblease:1:"
	ValuePrefix     = "wbval:1:"
)

// Fence is a parsed tombstone or lease.
type Fence struct {
	// LSN is the commit LSN (start of the commit record) of the newest
	// transaction that fenced the key; 0 when unknown, as in a lease taken
	// over an absent key. A replica has replayed that commit once its
	// pg_last_wal_replay_lsn() is strictly greater than LSN.
	LSN wal.LSN
	// Token makes this tombstone or lease unique.
	Token string
}

// Tombstone is what walbust's fence action writes into a key: the commit
// LSN and a random token, "wbfence:1:<lsn>:<token>". token must be valid
// (see NewToken).
func Tombstone(lsn wal.LSN, token string) string {
	return TombstonePrefix + formatDecimal(uint64(lsn)) + ":" + token
}

// Lease is what a reader writes over a tombstone (keeping its LSN and its
// remaining TTL) or over an absent key (LSN 0): "wblease:1:<lsn>:<token>".
func Lease(lsn wal.LSN, token string) string {
	return LeasePrefix + formatDecimal(uint64(lsn)) + ":" + token
}

// ParseTombstone parses a tombstone.
func ParseTombstone(s string) (Fence, error) {
	return parseFence(s, TombstonePrefix, "tombstone")
}

// ParseLease parses a lease.
func ParseLease(s string) (Fence, error) {
	return parseFence(s, LeasePrefix, "lease")
}

var errNoPrefix = errors.New("wrong prefix")

func parseFence(s, prefix, what string) (Fence, error) {
	rest, ok := strings.CutPrefix(s, prefix)
	if !ok {
		return Fence{}, fmt.Errorf("%s %.40q: %w (want %s<lsn>:<token>)", what, s, errNoPrefix, prefix)
	}
	lsn, token, ok := strings.Cut(rest, ":")
	if !ok {
		return Fence{}, fmt.Errorf("%s %.40q: want %s<lsn>:<token>", what, s, prefix)
	}
	v, err := parseDecimal(lsn)
	if err != nil {
		return Fence{}, fmt.Errorf("%s %.40q: lsn %w", what, s, err)
	}
	if !validToken(token) {
		return Fence{}, fmt.Errorf("%s %.40q: token must be %d-%d lower-case hex digits", what, s, MinTokenLen, MaxTokenLen)
	}
	return Fence{LSN: wal.LSN(v), Token: token}, nil
}
