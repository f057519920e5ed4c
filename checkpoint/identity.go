package checkpoint

import (
	"bufio"
	"fmt"
	"strings"

	"github.com/walbust/walbust/replication/wal"
)

// Identity says whose position a checkpoint is. An LSN means something only
// on the cluster, database and slot that streamed it: the same number on a
// re-initialised cluster, in another database or for another slot would
// skip changes that were never applied.
type Identity struct {
	// SystemID is IDENTIFY_SYSTEM's systemid, new whenever a cluster is
	// initialised (kept by its physical standbys, so a failover keeps it).
	SystemID string `json:"system_identifier"`
	Database string `json:"database"`
	Slot     string `json:"slot"`
}

func (id Identity) String() string {
	return fmt.Sprintf("system_identifier %s, database %q, slot %q", id.SystemID, id.Database, id.Slot)
}

// Checkpoint is what a checkpoint file holds.
type Checkpoint struct {
	LSN wal.LSN
	// Identity is nil for a file that predates identities (a bare LSN line).
	Identity *Identity
}

// The file is the LSN on the first line (so `head -1` and older tooling
// still read the position), then one key=value line per identity field.
const (
	keySystemID = "system_identifier"
	keyDatabase = "database"
	keySlot     = "slot"
)

func (c Checkpoint) encode() string {
	var b strings.Builder
	b.WriteString(c.LSN.String() + "\n")
	if id := c.Identity; id != nil {
		fmt.Fprintf(&b, "%s=%s\n%s=%s\n%s=%s\n", keySystemID, id.SystemID, keyDatabase, id.Database, keySlot, id.Slot)
	}
	return b.String()
}

func decode(data string) (Checkpoint, error) {
	var c Checkpoint
	sc := bufio.NewScanner(strings.NewReader(data))
	if !sc.Scan() {
		return c, fmt.Errorf("empty file")
	}
	first := strings.TrimSpace(sc.Text())
	// ParseLSN ignores what follows the number; a corrupt file must not.
	if !isLSN(first) {
		return c, fmt.Errorf("first line %q is not an LSN (X/Y in hex)", first)
	}
	lsn, err := wal.ParseLSN(first)
	if err != nil {
		return c, fmt.Errorf("first line is not an LSN: %w", err)
	}
	c.LSN = lsn
	fields := map[string]string{}
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			return c, fmt.Errorf("line %q is not key=value", line)
		}
		if _, dup := fields[k]; dup {
			return c, fmt.Errorf("%s given twice", k)
		}
		fields[k] = v
	}
	if err := sc.Err(); err != nil {
		return c, err
	}
	if len(fields) == 0 {
		return c, nil
	}
	id := &Identity{SystemID: fields[keySystemID], Database: fields[keyDatabase], Slot: fields[keySlot]}
	for k, v := range map[string]string{keySystemID: id.SystemID, keyDatabase: id.Database, keySlot: id.Slot} {
		if v == "" {
			return c, fmt.Errorf("%s missing", k)
		}
	}
	if len(fields) != 3 {
		return c, fmt.Errorf("unknown keys among %v", fields)
	}
	c.Identity = id
	return c, nil
}

// isLSN: X/Y, each 1 to 8 hex digits, and nothing else.
func isLSN(s string) bool {
	hi, lo, ok := strings.Cut(s, "/")
	return ok && isHex32(hi) && isHex32(lo)
}

func isHex32(s string) bool {
	if len(s) == 0 || len(s) > 8 {
		return false
	}
	for _, r := range s {
		if !strings.ContainsRune("0123456789abcdefABCDEF", r) {
			return false
		}
	}
	return true
}
