package protocol

import (
	"strings"

	"github.com/walbust/walbust/replication/wal"
)

// A key under walbust's refresh action (deps.yaml action: refresh) holds
// exactly its value, no envelope: a plain GET reads what a reader would
// have cached itself. Next to it, RefreshLSNKey(key) holds the commit LSN
// of that value in pg_lsn text, followed by " stale <lsn>" while the value
// is stale (a later change's value query failed, so the value is older
// than that change):
//
//	16/B374D848                  the value is that commit's
//	16/B374D848 stale 16/B3750000  a refresh after it failed; the value stays until its TTL
//	0/0 stale 16/B3750000          the same for a value a reader cached (it had no LSN key)
//
// walbust writes both keys in one script (invalidator/lua/refresh.lua),
// which in a Redis Cluster needs them in one slot: the key must carry a
// hash tag (HasHashTag), as must a reader's MGET of the two.

// RefreshLSNSuffix is appended to a refreshed key to name its LSN key.
const RefreshLSNSuffix = ":lsn"

// RefreshLSNKey is where walbust keeps the commit LSN and stale flag of a
// key it refreshes.
func RefreshLSNKey(key string) string { return key + RefreshLSNSuffix }

// RefreshMark is what a refreshed key's LSN key says.
type RefreshMark struct {
	// LSN is the commit LSN of the value; 0 when there is no LSN key (a
	// reader cached the value, and walbust has not refreshed it since) or
	// the value a stale flag was put on was a reader's.
	LSN wal.LSN
	// Stale: the refresh of a later change failed, and the value is older
	// than that change. It stays until its TTL or the next refresh that
	// works.
	Stale bool
	// StaleLSN is the newest change whose refresh failed, when Stale.
	StaleLSN wal.LSN
}

// ParseRefreshMark reads an LSN key's text (absent: ""). It is as lenient
// as the script: what does not parse as an LSN counts as 0/0, and the
// value is stale whenever the text holds " stale ".
func ParseRefreshMark(s string) RefreshMark {
	base, flag, stale := strings.Cut(s, " stale ")
	m := RefreshMark{Stale: stale}
	m.LSN, _ = wal.ParseLSN(base)
	if stale {
		m.StaleLSN, _ = wal.ParseLSN(flag)
	}
	return m
}

// HasHashTag reports whether key carries a Redis Cluster hash tag: a
// non-empty text between its first '{' and the next '}', which alone
// decides its slot. Then key and every companion made by appending to it
// (RefreshLSNKey(key), key+":stale") share a slot; without one they almost
// always do not.
func HasHashTag(key string) bool {
	open := strings.IndexByte(key, '{')
	return open >= 0 && strings.IndexByte(key[open+1:], '}') > 0
}
