package validate

import (
	"context"
	"errors"
	"fmt"
	"net"
	"regexp"
	"slices"
	"sort"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Postgres preflight: what the server and the role walbust logs in as must
// allow before setup can create the publication and the slot and run can
// stream, each problem with the statement that fixes it and who may run it.

// Step is what a server problem stops.
type Step int

// The steps of setup and run.
const (
	StepPublication Step = 1 << iota // CREATE or ALTER PUBLICATION
	StepSlot                         // pg_create_logical_replication_slot
	StepStream                       // a replication connection streaming the slot
)

// ServerProblem is one thing the server or the role does not allow.
type ServerProblem struct {
	Blocks Step
	// RoleOnly: only the connecting role's own attributes are at fault,
	// so another role (walbust's) can do the step.
	RoleOnly bool
	Msg      string
}

func (p ServerProblem) String() string { return p.Msg }

// Target is one walbust deployment (or shard) to check for: its slot,
// publication and deps.yaml tables ("schema.table").
type Target struct {
	Slot, Publication string
	Tables            []string
}

// Server checks wal_level, free replication slots and WAL senders, the
// role's REPLICATION attribute and its right to create or change each
// target's publication. err is for failures to check at all.
func Server(ctx context.Context, conn *pgx.Conn, targets []Target) ([]ServerProblem, error) {
	var s struct {
		user, db, walLevel               string
		super, replication, createOnDB   bool
		maxSlots, slots, maxSenders, wal int
	}
	err := conn.QueryRow(ctx, `SELECT current_user, current_database(), current_setting('wal_level'),
  r.rolsuper, r.rolreplication, has_database_privilege(current_database(), 'CREATE'),
  current_setting('max_replication_slots')::int, (SELECT count(*) FROM pg_replication_slots)::int,
  current_setting('max_wal_senders')::int, (SELECT count(*) FROM pg_stat_replication)::int
FROM pg_roles r WHERE r.rolname = current_user`).Scan(&s.user, &s.db, &s.walLevel, &s.super, &s.replication, &s.createOnDB,
		&s.maxSlots, &s.slots, &s.maxSenders, &s.wal)
	if err != nil {
		return nil, fmt.Errorf("read the server's replication settings: %w", err)
	}
	role, db := ident(s.user), ident(s.db)
	var ps []ServerProblem
	if s.walLevel != "logical" {
		ps = append(ps, ServerProblem{Blocks: StepSlot | StepStream, Msg: fmt.Sprintf(
			"wal_level is %s, but walbust decodes the WAL, which needs wal_level = logical. Fix, as a superuser: "+
				"ALTER SYSTEM SET wal_level = logical; then restart Postgres (a reload is not enough)", s.walLevel)})
	}
	if !s.super && !s.replication {
		ps = append(ps, ServerProblem{Blocks: StepSlot | StepStream, RoleOnly: true, Msg: fmt.Sprintf(
			"role %s has no REPLICATION attribute, which creating the replication slot and streaming from it need. "+
				"Fix, as a superuser: ALTER ROLE %s REPLICATION", role, role)})
	}

	var missingSlots, idleSlots []string // to create; existing but not streamed
	for _, t := range targets {
		var exists, active bool
		if err := conn.QueryRow(ctx, `SELECT count(*) > 0, coalesce(bool_or(active), false) FROM pg_replication_slots WHERE slot_name = $1`,
			t.Slot).Scan(&exists, &active); err != nil {
			return nil, fmt.Errorf("look up slot %s: %w", t.Slot, err)
		}
		if !exists {
			missingSlots = append(missingSlots, t.Slot)
		}
		if !active {
			idleSlots = append(idleSlots, t.Slot)
		}
	}
	if free := s.maxSlots - s.slots; len(missingSlots) > free {
		ps = append(ps, ServerProblem{Blocks: StepSlot, Msg: fmt.Sprintf(
			"no free replication slot for %s: max_replication_slots is %d and %d slots exist. Fix: drop a slot nothing uses "+
				"(list them: SELECT slot_name, active FROM pg_replication_slots; then SELECT pg_drop_replication_slot('name')), "+
				"or, as a superuser, ALTER SYSTEM SET max_replication_slots = %d; and restart Postgres",
			strings.Join(missingSlots, ", "), s.maxSlots, s.slots, s.slots+len(missingSlots))})
	}
	// A slot already streamed holds its WAL sender; the others need one each.
	if free := s.maxSenders - s.wal; len(idleSlots) > free {
		ps = append(ps, ServerProblem{Blocks: StepStream, Msg: fmt.Sprintf(
			"no free WAL sender to stream %s: max_wal_senders is %d and %d replication connections are open. Fix: stop a "+
				"replication client nothing needs (SELECT pid, application_name FROM pg_stat_replication), or, as a superuser, "+
				"ALTER SYSTEM SET max_wal_senders = %d; and restart Postgres",
			strings.Join(idleSlots, ", "), s.maxSenders, s.wal, s.wal+len(idleSlots))})
	}

	for _, t := range targets {
		p, err := publicationProblem(ctx, conn, t, role, db, s.super, s.createOnDB)
		if err != nil {
			return nil, err
		}
		if p != "" {
			ps = append(ps, ServerProblem{Blocks: StepPublication, Msg: p})
		}
	}
	return ps, nil
}

// publicationProblem says why the role cannot create t's publication or
// change it to publish t's tables ("" when it can, or need not).
func publicationProblem(ctx context.Context, conn *pgx.Conn, t Target, role, db string, super, createOnDB bool) (string, error) {
	if super {
		return "", nil
	}
	var exists, ownsPub bool
	var pubOwner string
	err := conn.QueryRow(ctx, `SELECT pg_get_userbyid(pubowner), pg_has_role(pubowner, 'USAGE') FROM pg_publication WHERE pubname = $1`,
		t.Publication).Scan(&pubOwner, &ownsPub)
	switch {
	case err == nil:
		exists = true
	case !errors.Is(err, pgx.ErrNoRows):
		return "", fmt.Errorf("look up publication %s: %w", t.Publication, err)
	}
	published := map[string]bool{}
	if exists {
		rows, err := conn.Query(ctx, `SELECT schemaname || '.' || tablename FROM pg_publication_tables WHERE pubname = $1`, t.Publication)
		if err != nil {
			return "", fmt.Errorf("list tables of publication %s: %w", t.Publication, err)
		}
		names, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return "", fmt.Errorf("list tables of publication %s: %w", t.Publication, err)
		}
		for _, n := range names {
			published[n] = true
		}
		if len(names) == len(t.Tables) && !slices.ContainsFunc(t.Tables, func(n string) bool { return !published[n] }) {
			return "", nil // setup finds it as it must be
		}
	}
	// Tables the statement adds must be the role's own (missing tables are
	// validate's to report).
	owners := map[string][]string{} // owner -> tables the role does not own
	for _, name := range t.Tables {
		if published[name] {
			continue
		}
		schema, table, _ := strings.Cut(name, ".")
		var owner string
		var owns bool
		err := conn.QueryRow(ctx, `SELECT pg_get_userbyid(c.relowner), pg_has_role(c.relowner, 'USAGE')
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2`, schema, table).Scan(&owner, &owns)
		if errors.Is(err, pgx.ErrNoRows) {
			continue
		}
		if err != nil {
			return "", fmt.Errorf("look up the owner of %s: %w", name, err)
		}
		if !owns {
			owners[owner] = append(owners[owner], name)
		}
	}
	var lacks []string
	switch {
	case !exists && !createOnDB:
		lacks = append(lacks, fmt.Sprintf("CREATE on database %s", db))
	case exists && !ownsPub:
		lacks = append(lacks, fmt.Sprintf("ownership of the publication (its owner is %s)", ident(pubOwner)))
	}
	var ownerNames []string
	for o := range owners {
		ownerNames = append(ownerNames, o)
	}
	sort.Strings(ownerNames)
	for _, o := range ownerNames {
		lacks = append(lacks, fmt.Sprintf("ownership of %s (owned by %s)", strings.Join(owners[o], ", "), ident(o)))
	}
	if len(lacks) == 0 {
		return "", nil
	}
	verb, stmt := "create", "CREATE PUBLICATION"
	if exists {
		verb, stmt = "change", "ALTER PUBLICATION"
	}
	who := "the tables' owner"
	if len(ownerNames) == 1 {
		who = ident(ownerNames[0])
	} else if len(ownerNames) > 1 {
		who = "a role that owns all of " + strings.Join(quoteAll(ownerNames), ", ")
	}
	fix := fmt.Sprintf("Fix: run `walbust setup` as a superuser, or have %s run the %s statement `walbust setup --print-sql` prints", who, stmt)
	if !exists && len(ownerNames) == 1 {
		var ownerMayCreate bool
		if err := conn.QueryRow(ctx, `SELECT has_database_privilege($1, current_database(), 'CREATE')`, ownerNames[0]).Scan(&ownerMayCreate); err != nil {
			return "", fmt.Errorf("check %s's privileges on database %s: %w", ident(ownerNames[0]), db, err)
		}
		if !ownerMayCreate {
			fix += fmt.Sprintf(" (after the database owner or a superuser runs GRANT CREATE ON DATABASE %s TO %s)", db, who)
		}
	}
	fix += fmt.Sprintf("; then `walbust setup` as %s finds the publication and creates only the slot", role)
	return fmt.Sprintf("role %s may not %s publication %s: %s needs %s. %s",
		role, verb, ident(t.Publication), stmt, strings.Join(lacks, " and "), fix), nil
}

func ident(s string) string { return pgx.Identifier{s}.Sanitize() }

func quoteAll(names []string) []string {
	out := make([]string, len(names))
	for i, n := range names {
		out[i] = ident(n)
	}
	return out
}

// hbaRejection parses Postgres's "no pg_hba.conf entry for host "h", user
// "u", database "d", ..." message.
var hbaRejection = regexp.MustCompile(`no pg_hba\.conf entry for (?:replication connection from )?host "([^"]*)", user "([^"]*)"(?:, database "([^"]*)")?`)

// ConnectError explains a failed connection where Postgres says why: a
// pg_hba.conf rejection (SQLSTATE 28000) gets the line that would admit
// it. Other errors are returned as they are.
func ConnectError(err error) error {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "28000" {
		return err
	}
	m := hbaRejection.FindStringSubmatch(pgErr.Message)
	if m == nil {
		return err
	}
	host, user, db := m[1], m[2], m[3]
	if db == "" {
		db = "all"
	}
	mask := "/32"
	if ip := net.ParseIP(host); ip != nil && ip.To4() == nil {
		mask = "/128"
	}
	// A hostssl line admits only TLS connections: suggest it only to a
	// client that was using TLS.
	kind, note := "hostssl", "host instead of hostssl would also admit connections without TLS"
	if strings.Contains(pgErr.Message, "no encryption") {
		kind, note = "host", "hostssl would require TLS, once postgres.url says sslmode=require or stricter"
	}
	return fmt.Errorf("postgres rejected the connection: %s (SQLSTATE 28000): its pg_hba.conf has no line admitting role %q to database %q from %s. "+
		"Fix, where the server runs: add a line such as\n    %s  %s  %s  %s%s  scram-sha-256\n"+
		"to pg_hba.conf (%s; walbust's logical replication connection matches the same line, by database name) "+
		"and reload it: SELECT pg_reload_conf()",
		pgErr.Message, user, db, host, kind, db, user, host, mask, note)
}
