package mapping

import (
	"fmt"
	"slices"

	"github.com/walbust/walbust/replication/wal"
)

// Rules are bound to tables by OID, so a renamed table keeps its rules, and
// by name, so a table swapped in under a registered name (the rename-swap
// migration) gets them too. When the two disagree both apply: a change
// over-invalidates rather than under-invalidates.

// NoticeKind says what a Notice is about.
type NoticeKind uint8

// Notice kinds.
const (
	// Renamed: a table bound by OID arrives under a name deps.yaml does not use.
	Renamed NoticeKind = iota + 1
	// Swapped: another table than the one bound at start has a registered name.
	Swapped
	// Unmapped: a published table that no rule maps.
	Unmapped
)

// Notice is a change in how relations bind to deps.yaml tables, worth one
// warning in the log. Each is given once per Mapper.
type Notice struct {
	Kind     NoticeKind
	Table    *Table // the deps.yaml entry; nil for Unmapped
	Relation *wal.Relation
	Msg      string // what happened and the fix
}

// BindOIDs binds registry tables to the OIDs the catalog gives their names
// (replication.TableOIDs), before any Relation message arrives: a table
// renamed before walbust first sees one of its changes is still found.
func (m *Mapper) BindOIDs(oids map[string][]uint32) {
	for name, ids := range oids {
		if t := m.reg.Tables[name]; t != nil {
			for _, id := range ids {
				m.oids[id] = t
			}
		}
	}
}

// Relation binds a Relation message (call it for each, in the streaming
// goroutine) and returns the notices it gave rise to.
func (m *Mapper) Relation(rel *wal.Relation) []Notice {
	m.bind(rel)
	out := m.notices
	m.notices = nil
	return out
}

// tablesOf is what rel's changes map to; it learns rel's OID when the name
// matches, so the table stays bound if it is renamed later.
func (m *Mapper) tablesOf(rel *wal.Relation) []*Table {
	name := rel.QualifiedName()
	var out []*Table
	byOID, byName := m.oids[rel.ID], m.reg.Tables[name]
	if byOID != nil {
		out = append(out, byOID)
		if byOID.Name != name {
			m.notice(fmt.Sprintf("renamed %d %s", rel.ID, name), Notice{Kind: Renamed, Table: byOID, Relation: rel,
				Msg: fmt.Sprintf("table %s was renamed to %s; walbust keeps applying its rules (bound by OID %d), but %s:%d:%d still names %s: "+
					"write %s there (if another table now takes the old name, keep both entries)",
					byOID.Name, name, rel.ID, m.reg.File, byOID.Line, byOID.Column, byOID.Name, name)})
		}
	}
	if byName != nil && byName != byOID {
		out = append(out, byName)
		if byOID == nil {
			if was := m.boundOIDs(byName); len(was) > 0 {
				slices.Sort(was)
				m.notice(fmt.Sprintf("swapped %d", rel.ID), Notice{Kind: Swapped, Table: byName, Relation: rel,
					Msg: fmt.Sprintf("%s is now another table (OID %d, was OID %v): walbust applies %s:%d:%d's rules to both, "+
						"under whatever name the old one has now; once it is no longer needed, run walbust setup to stop publishing it, or drop it",
						name, rel.ID, was, m.reg.File, byName.Line, byName.Column)})
			}
			m.oids[rel.ID] = byName
		}
	}
	if len(out) == 0 {
		m.notice("unmapped "+name, Notice{Kind: Unmapped, Relation: rel,
			Msg: fmt.Sprintf("table %s is published but no rule in %s maps it; its changes invalidate nothing and are counted in walbust_unmapped_changes_total: "+
				"add it to %s, or run walbust setup to stop publishing it", name, m.reg.File, m.reg.File)})
	}
	return out
}

// boundOIDs are the OIDs t is bound to.
func (m *Mapper) boundOIDs(t *Table) []uint32 {
	var out []uint32
	for id, bound := range m.oids {
		if bound == t {
			out = append(out, id)
		}
	}
	return out
}

func (m *Mapper) notice(id string, n Notice) {
	if m.noticed[id] {
		return
	}
	m.noticed[id] = true
	m.notices = append(m.notices, n)
}

// InheritOIDs binds in m's registry the tables old had bound by OID (at
// start or learned from Relation messages since), matched by their deps.yaml
// name: a reloaded registry must not forget a rename walbust was following.
func (m *Mapper) InheritOIDs(old *Mapper) {
	for id, t := range old.oids {
		if nt := m.reg.Tables[t.Name]; nt != nil {
			m.oids[id] = nt
		}
	}
}
