package protocol

import (
	_ "embed"
	"strings"
)

// Pattern indexes. A deps.yaml pattern marked index: true ("search:{owner_id}:*"
// with index: true) names a family of keys: the pattern without its final
// '*', rendered with the row's values ("search:42:"). A reader that fills a
// key of the family also adds the key to the family's index set, so
// walbust invalidates the family by reading the set, at a cost of the
// family's size, instead of scanning the whole keyspace.
//
// The index set is IndexKey(family). A reader adds the key to it before,
// or atomically with, the fill that writes the key (IndexedCASScript in
// one script where both keys share a server, IndexAddScript then CASScript
// in Redis Cluster), keeps its TTL at least the key's, and does not cache
// a key whose family's set already holds MaxIndexMembers other keys.
// walbust moves the set to DrainingKey(family) atomically (IndexDrainScript),
// UNLINKs every member, then deletes the draining set: a key added
// meanwhile lands in a fresh index, and a pass that fails half way leaves
// the draining set for its retry or replay.

// IndexKey is the index set of family. The family is the hash tag, so the
// index and its draining copy share a Cluster slot.
func IndexKey(family string) string { return "walbust:index:{" + family + "}" }

// DrainingKey is where walbust moves family's index while it invalidates
// its members.
func DrainingKey(family string) string { return "walbust:index-draining:{" + family + "}" }

// MaxIndexMembers is the default bound on a family's index set: a reader
// does not cache a further key of a full family (it is served, not stored).
const MaxIndexMembers = 10000

// IndexFamily returns the family of an indexed pattern as walbust renders
// it, a glob-escaped prefix and a final '*': the prefix, unescaped. ok is
// false for any other pattern.
func IndexFamily(pattern string) (family string, ok bool) {
	if !strings.HasSuffix(pattern, "*") {
		return "", false
	}
	p := pattern[:len(pattern)-1]
	var b strings.Builder
	for i := 0; i < len(p); i++ {
		switch c := p[i]; c {
		case '\\':
			if i+1 == len(p) {
				return "", false // escaped the final '*'
			}
			i++
			b.WriteByte(p[i])
		case '*', '?', '[', ']':
			return "", false
		default:
			b.WriteByte(c)
		}
	}
	return b.String(), true
}

// IndexedCASScript is CASScript plus the index: it sets KEYS[1] to ARGV[2]
// only if the key still holds ARGV[1], and then adds KEYS[1] to the index
// set KEYS[2] (IndexKey of its family), whose TTL it raises to at least
// the key's. Both keys must be on one server (standalone, Sentinel, or a
// Cluster where they share a slot).
//
//	KEYS[1] = key, KEYS[2] = index
//	ARGV[1] = expected content, ARGV[2] = new content, ARGV[3] = TTL in ms, or 0 to keep the key's TTL,
//	ARGV[4] = the index's bound (MaxIndexMembers)
//	returns 1 if set, 0 if the key had changed, -1 if the index is full (nothing written)
//
//go:embed lua/cas_indexed.lua
var IndexedCASScript string

// IndexAddScript adds ARGV[1] to the index set KEYS[1] and raises the
// set's TTL to at least ARGV[2] ms (0: no expiry); in Cluster mode readers
// run it before CASScript, since the key and its index are in different
// slots. Added first, a key is never cached outside its index: if walbust
// drains the index in between, it also removes the reader's lease, and the
// fill fails.
//
//	KEYS[1] = index, ARGV[1] = key, ARGV[2] = TTL in ms or 0, ARGV[3] = the bound
//	returns 1 if the key is in the index, 0 if the index is full
//
//go:embed lua/index_add.lua
var IndexAddScript string

// IndexDrainScript moves the index KEYS[1] into its draining set KEYS[2]
// (adding to what a failed pass left there) and returns the draining
// set's members; walbust UNLINKs them, then deletes KEYS[2].
//
//	KEYS[1] = index, KEYS[2] = draining, ARGV[1] = the draining set's TTL in ms
//	returns the members
//
//go:embed lua/index_drain.lua
var IndexDrainScript string
