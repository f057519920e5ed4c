package pipeline

import (
	"fmt"

	"go.uber.org/zap"

	"github.com/walbust/walbust/mapping"
	"github.com/walbust/walbust/replication/wal"
)

// checkBinding logs how rel binds to deps.yaml when that is news: a
// renamed table, one swapped in under a registered name, or a published
// table that no rule maps.
func (p *Pipeline) checkBinding(rel *wal.Relation) {
	for _, n := range p.mapper.Relation(rel) {
		fields := []zap.Field{zap.String("relation", rel.QualifiedName()), zap.Uint32("oid", rel.ID)}
		if n.Table != nil {
			fields = append(fields, zap.String("table", n.Table.Name),
				zap.String("deps", fmt.Sprintf("%s:%d:%d", p.opts.Registry.File, n.Table.Line, n.Table.Column)))
		}
		msg := map[mapping.NoticeKind]string{
			mapping.Renamed:  "table renamed; still invalidating it by OID, but deps.yaml names the old name",
			mapping.Swapped:  "another table took a registered name; invalidating for both",
			mapping.Unmapped: "changes of a published table are not mapped by any rule",
		}[n.Kind]
		p.log.Warn(msg, append(fields, zap.String("detail", n.Msg))...)
	}
}
