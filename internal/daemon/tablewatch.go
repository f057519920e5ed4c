package daemon

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/zap"

	"github.com/walbust/walbust/internal/metrics"
	"github.com/walbust/walbust/internal/validate"
	"github.com/walbust/walbust/invalidator"
	"github.com/walbust/walbust/mapping"
	"github.com/walbust/walbust/replication"
	"github.com/walbust/walbust/replication/wal"
)

// A mapped table that disappears (DROP TABLE) sends nothing down the
// stream, so walbust looks: at start (preflight) and every
// tableCheckInterval while running, by name and by the OIDs bound at start
// (so a DROP followed by a CREATE of the same name counts too). Its cached
// rows are all wrong now, so its on_truncate rules are applied once,
// loudly, and the other tables are served as before. A table that is missing at start does not stop walbust
// either; validate still reports it.

// tableState is the daemon's view of its tables.
type tableState struct {
	oids     map[string][]uint32 // bound at start, for the pipeline's mapper
	applier  *serialApplier
	mu       sync.Mutex
	gone     map[string]bool // tables known not to exist, whose on_truncate was applied
	goneOIDs map[uint32]bool // tables bound at start that were dropped, likewise
}

func (st *tableState) markGone(names []string, oids []uint32, m *metrics.Metrics) {
	st.mu.Lock()
	defer st.mu.Unlock()
	for _, name := range names {
		st.gone[name] = true
		m.TableMissing(name)
	}
	for _, id := range oids {
		st.goneOIDs[id] = true
	}
}

// serialApplier lets the table watcher apply invalidations between the
// pipeline's batches: an Invalidator applies one batch at a time.
type serialApplier struct {
	mu  sync.Mutex
	inv *invalidator.Invalidator
}

func (a *serialApplier) ApplyBatch(ctx context.Context, lsn wal.LSN, invs []mapping.Invalidation) (invalidator.Stats, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.inv.ApplyBatch(ctx, lsn, invs)
}

// ApplyChunk applies invs without moving the applied watermark.
func (a *serialApplier) ApplyChunk(ctx context.Context, lsn wal.LSN, invs []mapping.Invalidation) (invalidator.Stats, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.inv.ApplyChunk(ctx, lsn, invs)
}

// Settle records the settled position after a re-fence.
func (a *serialApplier) Settle(ctx context.Context, lsn wal.LSN) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.inv.Settle(ctx, lsn)
}

// bindTables resolves the registry's tables at start. It returns problems
// (from validate.Registry) when any must stop walbust: a missing table
// alone does not; it is logged, and its on_truncate rules applied.
func (d *daemon) bindTables(ctx context.Context, conn *pgx.Conn, problems validate.Problems) (validate.Problems, error) {
	path := bindingsPath(d.cfg.Checkpoint.Path)
	reg := d.reload.registry()
	b, err := resolveTables(ctx, conn, reg, d.cfg.Postgres.Publication, path)
	if err != nil {
		return nil, err
	}
	if err := saveBindings(path, b.oids); err != nil {
		// Only a restart after a rename needs the file: not worth stopping for.
		d.log.Warn("cannot remember which tables deps.yaml names; after a restart, renamed tables will be looked up by name only", zap.Error(err))
	}
	d.tables = &tableState{oids: b.oids, applier: d.applier, gone: map[string]bool{}, goneOIDs: map[uint32]bool{}}
	var fatal validate.Problems
	for _, p := range problems {
		if p.MissingTable == "" {
			fatal = append(fatal, p)
		}
	}
	for _, name := range reg.Names() {
		t := reg.Tables[name]
		at := fmt.Sprintf("%s:%d:%d", reg.File, t.Line, t.Column)
		if now := b.renamed[name]; now != "" {
			d.log.Warn("table renamed; still invalidating it by OID, but deps.yaml names the old name", zap.String("table", name),
				zap.String("relation", now), zap.String("deps", at), zap.String("fix", fmt.Sprintf("write %s instead of %s in %s", now, name, at)))
		}
		for _, other := range b.others[name] {
			d.log.Warn("a table renamed away from a name in deps.yaml is still published; applying that entry's rules to it too",
				zap.String("table", name), zap.String("relation", other), zap.String("deps", at),
				zap.String("fix", fmt.Sprintf("once %s is no longer needed, run walbust setup to stop publishing it", other)))
		}
	}
	if len(fatal) > 0 {
		return problems, nil // refused anyway: report everything validate would
	}
	if len(b.missing) == 0 {
		return nil, nil
	}
	lsn, err := currentLSN(ctx, conn)
	if err != nil {
		return nil, err
	}
	if err := d.tablesGone(ctx, lsn, b.missing, "at start", ""); err != nil {
		return nil, err
	}
	d.tables.markGone(b.missing, nil, d.metrics)
	return nil, nil
}

// currentLSN is the WAL position now: past the DROP of a table found
// missing, so bump and fence record a version above the table's last change.
func currentLSN(ctx context.Context, conn *pgx.Conn) (wal.LSN, error) {
	var text string
	if err := conn.QueryRow(ctx, `SELECT pg_current_wal_lsn()::text`).Scan(&text); err != nil {
		return 0, fmt.Errorf("current WAL position: %w", err)
	}
	return wal.ParseLSN(text)
}

// tablesGone applies the on_truncate rules of tables that were dropped.
func (d *daemon) tablesGone(ctx context.Context, lsn wal.LSN, names []string, when, detail string) error {
	// One registry for the whole call: a reload may swap it meanwhile, and
	// a table it no longer names is not this call's to invalidate.
	reg := d.reload.registry()
	names = slices.DeleteFunc(slices.Clone(names), func(n string) bool { return reg.Tables[n] == nil })
	if len(names) == 0 {
		return nil
	}
	gone, err := reg.Only(names)
	if err != nil {
		return err
	}
	var plan mapping.Plan
	mapping.NewMapper(gone, nil).MapEverything(lsn, &plan)
	for _, name := range names {
		t := reg.Tables[name]
		fields := []zap.Field{zap.String("table", name), zap.String("noticed", when), zap.String("deps", fmt.Sprintf("%s:%d:%d", reg.File, t.Line, t.Column)),
			zap.String("fix", fmt.Sprintf("remove %s from %s (walbust validate reports it until then), or create it again", name, reg.File))}
		if detail != "" {
			fields = append(fields, zap.String("detail", detail))
		}
		d.log.Error("a table in deps.yaml was dropped; applying its on_truncate rules once and serving the other tables", fields...)
	}
	for _, p := range plan.Problems {
		d.log.Error("a dropped table has no on_truncate rules, so its keys cannot be invalidated; flush them by hand",
			zap.String("table", p.Table), zap.String("problem", p.Msg))
	}
	// Not ApplyBatch: lsn is the server's WAL position, not a position
	// the stream has applied up to, so the watermark must not move to it.
	st, err := d.tables.applier.ApplyChunk(ctx, lsn, plan.Invalidations())
	if err != nil {
		return fmt.Errorf("apply on_truncate rules of dropped table(s): %w", err)
	}
	d.log.Warn("applied the on_truncate rules of dropped table(s)", zap.Strings("tables", names), zap.Stringer("lsn", lsn),
		zap.Int("keys", st.Keys), zap.Int("patterns", st.Patterns), zap.Int("keys_removed_by_patterns", st.PatternMatches))
	return nil
}

// tableWatcher notices, while running, mapped tables that stop existing:
// by name and by the OIDs bound at start (a renamed table still exists).
type tableWatcher struct {
	d    *daemon
	conn lazyConn
}

func (w *tableWatcher) poll(ctx context.Context) {
	st := w.d.tables
	reg := w.d.reload.registry()
	var ids []uint32
	for _, oids := range st.oids {
		ids = append(ids, oids...)
	}
	var dropped, missing, back []string
	var droppedOIDs []uint32
	var detail []string
	err := w.conn.do(ctx, func(ctx context.Context, conn *pgx.Conn) error {
		byName, err := replication.TableOIDs(ctx, conn, reg.Names())
		if err != nil {
			return err
		}
		current, err := replication.TableNames(ctx, conn, ids)
		if err != nil {
			return err
		}
		st.mu.Lock()
		defer st.mu.Unlock()
		for _, name := range reg.Names() {
			_, alive := byName[name]
			lost := false
			for _, id := range st.oids[name] {
				if _, ok := current[id]; ok {
					alive = true
				} else if !st.goneOIDs[id] {
					// Dropped, though the name may already be taken again
					// (DROP and CREATE): the old rows' keys are wrong either way.
					droppedOIDs, lost = append(droppedOIDs, id), true
					detail = append(detail, fmt.Sprintf("OID %d, the table named %s when walbust started, was dropped", id, name))
				}
			}
			switch {
			case !alive && !st.gone[name]:
				missing = append(missing, name)
				dropped = append(dropped, name)
			case lost:
				dropped = append(dropped, name)
			case alive && st.gone[name]:
				back = append(back, name)
				delete(st.gone, name)
			}
		}
		return nil
	})
	if err != nil {
		return // the stream reports connection trouble
	}
	for _, name := range back {
		w.d.metrics.TableBack(name)
		w.d.log.Info("a table in deps.yaml exists again; its rules apply to its changes", zap.String("table", name))
	}
	if len(dropped) == 0 {
		return
	}
	var lsn wal.LSN
	err = w.conn.do(ctx, func(ctx context.Context, conn *pgx.Conn) (err error) {
		lsn, err = currentLSN(ctx, conn)
		return err
	})
	if err == nil {
		err = w.d.tablesGone(ctx, lsn, dropped, "while running", strings.Join(detail, "; "))
	}
	if err != nil {
		// Not marked gone: the next poll tries again.
		w.d.log.Error("could not apply the on_truncate rules of dropped table(s); retrying", zap.Strings("tables", dropped), zap.Error(err))
		return
	}
	st.markGone(missing, droppedOIDs, w.d.metrics)
}

// tableCheckInterval is how often the catalog is checked for dropped
// tables: a few cheap catalog lookups.
const tableCheckInterval = 5 * time.Second

// StartPass starts applying the patterns of batches up to lsn. Not under
// the lock: a pass may take seconds, and the direct keys of later batches
// must not wait for it (the invalidator is safe for concurrent use; it
// records the passes' positions in the order they were started).
func (a *serialApplier) StartPass(ctx context.Context, lsn wal.LSN, patterns []mapping.Invalidation) func() (invalidator.Stats, error) {
	return a.inv.StartPass(ctx, lsn, patterns).Wait
}
