package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"github.com/walbust/walbust/mapping"
	"github.com/walbust/walbust/replication"
	"github.com/walbust/walbust/replication/wal"
)

// Which table each deps.yaml entry means is decided by name at the first
// start and then by OID, which survives ALTER TABLE ... RENAME. The OIDs
// are remembered in a file next to the checkpoint, so a restart after a
// rename still finds the table.

// tableBindings is what resolveTables found.
type tableBindings struct {
	oids    map[string][]uint32 // registry name -> the OIDs whose changes its rules map
	renamed map[string]string   // registry name that no longer exists -> its table's name now
	others  map[string][]string // registry name -> other names of tables bound to it (rename-swap)
	missing []string            // registry names with no table at all: dropped, or not created yet
}

// bindingsFile is the on-disk form: registry name -> OIDs.
type bindingsFile struct {
	Tables map[string][]uint32 `json:"tables"`
}

func bindingsPath(checkpointPath string) string { return checkpointPath + ".tables" }

// resolveTables binds the registry's tables to OIDs: by name, and by the
// OIDs remembered from earlier runs while those tables are still published
// (a table renamed away and no longer published sends nothing anyway).
func resolveTables(ctx context.Context, conn replication.Querier, reg *mapping.Registry, publication, path string) (*tableBindings, error) {
	byName, err := replication.TableOIDs(ctx, conn, reg.Names())
	if err != nil {
		return nil, err
	}
	remembered, err := loadBindings(path)
	if err != nil {
		return nil, err
	}
	var ids []uint32
	for _, name := range reg.Names() {
		ids = append(ids, remembered[name]...)
	}
	current, err := replication.TableNames(ctx, conn, ids)
	if err != nil {
		return nil, err
	}
	published := map[string]bool{}
	if len(ids) > 0 {
		if err := publishedInto(ctx, conn, publication, published); err != nil {
			return nil, err
		}
	}
	b := &tableBindings{oids: map[string][]uint32{}, renamed: map[string]string{}, others: map[string][]string{}}
	for _, name := range reg.Names() {
		oid, exists := byName[name]
		if exists {
			b.oids[name] = append(b.oids[name], oid)
		}
		for _, id := range remembered[name] {
			now, ok := current[id]
			if !ok || id == oid || !published[now] {
				continue
			}
			b.oids[name] = append(b.oids[name], id)
			if exists {
				b.others[name] = append(b.others[name], now)
			} else if b.renamed[name] == "" {
				b.renamed[name] = now
			}
		}
		if len(b.oids[name]) == 0 {
			b.missing = append(b.missing, name)
		}
	}
	return b, nil
}

// publishedInto adds the publication's tables to set; without a
// publication (setup, before there is one) it adds nothing.
func publishedInto(ctx context.Context, conn replication.Querier, publication string, set map[string]bool) error {
	if publication == "" {
		return nil
	}
	rows, err := conn.Query(ctx, `SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = $1`, publication)
	if err != nil {
		return fmt.Errorf("list tables of publication %s: %w", publication, err)
	}
	defer rows.Close()
	for rows.Next() {
		var schema, table string
		if err := rows.Scan(&schema, &table); err != nil {
			return fmt.Errorf("list tables of publication %s: %w", publication, err)
		}
		set[wal.QualifiedName(schema, table)] = true
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("list tables of publication %s: %w", publication, err)
	}
	return nil
}

// loadBindings reads the remembered OIDs; no file means none.
func loadBindings(path string) (map[string][]uint32, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("table bindings: %w", err)
	}
	var f bindingsFile
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("table bindings %s: %w (remove the file to bind tables by name again)", path, err)
	}
	return f.Tables, nil
}

// saveBindings writes the OIDs atomically (a temporary file renamed over
// the old one), so a crash leaves the old or the new file, never half.
func saveBindings(path string, oids map[string][]uint32) error {
	f := bindingsFile{Tables: map[string][]uint32{}}
	for name, ids := range oids {
		f.Tables[name] = slices.Sorted(slices.Values(ids))
	}
	data, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("table bindings: %w", err)
	}
	defer os.Remove(tmp.Name()) // fails harmlessly once renamed
	if _, err := tmp.Write(append(data, '\n')); err != nil {
		tmp.Close()
		return fmt.Errorf("table bindings %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("table bindings %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("table bindings %s: %w", path, err)
	}
	return nil
}

// RenamedTables is what `walbust run` bound by OID, for validate to tell a
// renamed table from a dropped one: registry name that no longer exists ->
// its table's name now.
func RenamedTables(ctx context.Context, conn replication.Querier, reg *mapping.Registry, publication, checkpointPath string) (map[string]string, error) {
	b, err := resolveTables(ctx, conn, reg, publication, bindingsPath(checkpointPath))
	if err != nil {
		return nil, err
	}
	return b.renamed, nil
}
