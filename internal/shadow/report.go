package shadow

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
)

// Report is what `walbust shadow` prints (--json: as JSON).
type Report struct {
	Candidate    string        `json:"candidate"` // the candidate deps.yaml
	Running      string        `json:"running"`   // the deps.yaml in use (the config's deps)
	Publication  string        `json:"publication"`
	Slot         SlotReport    `json:"slot"`
	Seconds      float64       `json:"seconds"` // how long changes were streamed
	Transactions int           `json:"transactions"`
	Changes      int           `json:"changes"`
	NotCompared  int           `json:"not_compared"` // transactions left out of the diff: a lookup failed
	Keyspace     Keyspace      `json:"keyspace"`
	Tables       []TableReport `json:"tables"`
	Diff         Diff          `json:"diff"`
	Warnings     []string      `json:"warnings"`
}

// SlotReport is the temporary slot shadow streamed from, and its positions.
type SlotReport struct {
	Name      string `json:"name"`
	Temporary bool   `json:"temporary"`
	CreatedAt string `json:"created_at"` // the slot's consistent point: streaming starts there
	Received  string `json:"received"`   // highest WAL position received
	// ServerWALEnd is the server's WAL end in its last keepalive: WAL up
	// to it, between transactions, held nothing for the publication.
	ServerWALEnd string `json:"server_wal_end"`
	LastCommit   string `json:"last_commit"` // end of the last transaction mapped
	// Confirmed is the last flush position sent, to the temporary slot
	// only: what shadow had fully mapped. The configured slot is not used.
	Confirmed string `json:"confirmed"`
}

// Keyspace is the size of the configured Redis (DBSIZE), for SCAN costs.
type Keyspace struct {
	Known     bool             `json:"known"`
	Keys      int64            `json:"keys"`
	PerMaster map[string]int64 `json:"per_master,omitempty"`
	Error     string           `json:"error,omitempty"` // why it is unknown
}

// TableReport is one table: its changes, both sides' totals and the
// candidate's rules.
type TableReport struct {
	Table         string         `json:"table"`
	InCandidate   bool           `json:"in_candidate"`
	InRunning     bool           `json:"in_running"`
	Changes       int            `json:"changes"`
	ChangesPerSec float64        `json:"changes_per_sec"`
	Ops           map[string]int `json:"ops"`
	Candidate     SideTotals     `json:"candidate"`
	Running       SideTotals     `json:"running"`
	Rules         []RuleReport   `json:"rules"` // the candidate's
}

// SideTotals is what one side rendered for a table.
type SideTotals struct {
	Keys           int       `json:"keys"`
	KeysPerSec     float64   `json:"keys_per_sec"`
	Patterns       int       `json:"patterns"`
	PatternsPerSec float64   `json:"patterns_per_sec"`
	Scan           *ScanCost `json:"scan,omitempty"`
	Lookups        int       `json:"lookups"`
	LookupsPerSec  float64   `json:"lookups_per_sec"`
}

// RuleReport is one rule of the candidate.
type RuleReport struct {
	Rule           string    `json:"rule"`
	Position       string    `json:"position"` // file:line:column
	Keys           int       `json:"keys"`
	KeysPerSec     float64   `json:"keys_per_sec"`
	Patterns       int       `json:"patterns"`
	PatternsPerSec float64   `json:"patterns_per_sec"`
	Scan           *ScanCost `json:"scan,omitempty"`
	Query          string    `json:"query,omitempty"`
	Lookups        int       `json:"lookups"`
	LookupsPerSec  float64   `json:"lookups_per_sec"`
	LookupErrors   int       `json:"lookup_errors"`
	LookupError    string    `json:"lookup_error,omitempty"` // the first
	Latency        *Latency  `json:"latency,omitempty"`
	// SharedWith: other rules of the table with the same query, whose
	// lookups are counted together.
	SharedWith []string `json:"shared_with,omitempty"`
}

// ScanCost estimates what pattern invalidations cost Redis: each one SCANs
// the whole keyspace.
type ScanCost struct {
	Known              bool    `json:"known"` // false: Redis was not reachable for DBSIZE
	KeysExaminedPerSec float64 `json:"keys_examined_per_sec"`
	CallsPerSec        float64 `json:"scan_calls_per_sec"` // SCAN COUNT 1000 round trips
}

// Latency of lookup queries, in milliseconds.
type Latency struct {
	P50Ms   float64 `json:"p50_ms"`
	P99Ms   float64 `json:"p99_ms"`
	MaxMs   float64 `json:"max_ms"`
	Samples int     `json:"samples"`
}

// Diff is the invalidations only one side rendered, per transaction.
type Diff struct {
	OnlyCandidate DiffSide `json:"only_candidate"`
	OnlyRunning   DiffSide `json:"only_running"`
}

// DiffSide is one side's invalidations the other does not render, by the
// rule that rendered them.
type DiffSide struct {
	Keys     int         `json:"keys"`
	Patterns int         `json:"patterns"`
	Groups   []DiffGroup `json:"groups"`
}

// DiffGroup is one rule's keys (or patterns) the other side lacks.
type DiffGroup struct {
	Table    string   `json:"table"`
	Rule     string   `json:"rule"`
	Position string   `json:"position"`
	Pattern  bool     `json:"pattern"`
	Count    int      `json:"count"`
	Examples []string `json:"examples"`
}

// Print writes the report as tables.
func (r *Report) Print(w io.Writer) {
	fmt.Fprintf(w, "walbust shadow: %s (candidate) against %s (running), %.1fs of live changes from publication %s\n",
		r.Candidate, r.Running, r.Seconds, r.Publication)
	s := r.Slot
	fmt.Fprintf(w, "slot %s (temporary, dropped when shadow disconnects): created at %s, received up to %s (server WAL end %s), last commit mapped %s, confirmed to it %s\n",
		s.Name, s.CreatedAt, s.Received, orNone(s.ServerWALEnd), orNone(s.LastCommit), orNone(s.Confirmed))
	fmt.Fprintln(w, "nothing was written to Redis and the configured slot was not used")
	if r.Keyspace.Known {
		fmt.Fprintf(w, "redis keyspace: %d key(s) on %d master(s) (DBSIZE)\n", r.Keyspace.Keys, len(r.Keyspace.PerMaster))
	} else {
		fmt.Fprintf(w, "redis keyspace: unknown (%s): SCAN costs unknown\n", r.Keyspace.Error)
	}
	fmt.Fprintf(w, "%d transaction(s), %d change(s) (%s/s)\n\n", r.Transactions, r.Changes, num(float64(r.Changes)/max(r.Seconds, 1e-9)))

	tw := tabwriter.NewWriter(w, 2, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "TABLE / RULE\tWHERE\tCHANGES/S\tKEYS/S\tPATTERNS/S\tSCAN COST\tLOOKUPS/S\tLOOKUP LATENCY")
	for _, t := range r.Tables {
		fmt.Fprintf(tw, "%s\t%s\t%s (%d%s)\t\t\t\t\t\n", t.Table, where(t), num(t.ChangesPerSec), t.Changes, ops(t.Ops))
		for _, rr := range t.Rules {
			lookups, lat := "", ""
			if rr.Query != "" {
				lookups = fmt.Sprintf("%s (%d)", num(rr.LookupsPerSec), rr.Lookups)
				if rr.LookupErrors > 0 {
					lookups += fmt.Sprintf(", %d failed", rr.LookupErrors)
				}
				if rr.Latency != nil {
					lat = fmt.Sprintf("p50 %.2fms p99 %.2fms max %.2fms", rr.Latency.P50Ms, rr.Latency.P99Ms, rr.Latency.MaxMs)
				}
			}
			fmt.Fprintf(tw, "  %s\t%s\t\t%s (%d)\t%s (%d)\t%s\t%s\t%s\n", rr.Rule, rr.Position,
				num(rr.KeysPerSec), rr.Keys, num(rr.PatternsPerSec), rr.Patterns, scan(rr.Scan), lookups, lat)
		}
		for _, side := range []struct {
			name string
			in   bool
			tot  SideTotals
		}{{"candidate total", t.InCandidate, t.Candidate}, {"running total", t.InRunning, t.Running}} {
			if !side.in {
				continue
			}
			fmt.Fprintf(tw, "  (%s)\t\t\t%s (%d)\t%s (%d)\t%s\t%s (%d)\t\n", side.name,
				num(side.tot.KeysPerSec), side.tot.Keys, num(side.tot.PatternsPerSec), side.tot.Patterns, scan(side.tot.Scan),
				num(side.tot.LookupsPerSec), side.tot.Lookups)
		}
	}
	tw.Flush()

	fmt.Fprintf(w, "\ndiff against the running deps.yaml (invalidations per transaction that only one side renders")
	if r.NotCompared > 0 {
		fmt.Fprintf(w, "; %d transaction(s) not compared: a lookup failed", r.NotCompared)
	}
	fmt.Fprintln(w, "):")
	printDiffSide(w, "only the candidate renders", r.Diff.OnlyCandidate)
	printDiffSide(w, "only the running deps.yaml renders", r.Diff.OnlyRunning)
	for _, warn := range r.Warnings {
		fmt.Fprintln(w, "warning:", warn)
	}
}

func printDiffSide(w io.Writer, title string, d DiffSide) {
	fmt.Fprintf(w, "  %s: %d key(s), %d pattern(s)\n", title, d.Keys, d.Patterns)
	for _, g := range d.Groups {
		kind := "key(s)"
		if g.Pattern {
			kind = "pattern(s)"
		}
		fmt.Fprintf(w, "    %s %s (%s): %d %s, e.g. %s\n", g.Table, g.Rule, g.Position, g.Count, kind, strings.Join(g.Examples, ", "))
	}
}

func where(t TableReport) string {
	switch {
	case t.InCandidate && t.InRunning:
		return "both"
	case t.InCandidate:
		return "candidate only"
	case t.InRunning:
		return "running only"
	}
	return "neither (published, unmapped)"
}

func ops(m map[string]int) string {
	var parts []string
	for _, op := range []string{"insert", "update", "delete", "truncate"} {
		if n := m[op]; n > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", op, n))
		}
	}
	if len(parts) == 0 {
		return ""
	}
	return ": " + strings.Join(parts, ", ")
}

func scan(s *ScanCost) string {
	switch {
	case s == nil:
		return ""
	case !s.Known:
		return "unknown"
	}
	return fmt.Sprintf("%s keys/s in %s SCAN/s", num(s.KeysExaminedPerSec), num(s.CallsPerSec))
}

func num(f float64) string {
	switch {
	case f == 0:
		return "0"
	case f >= 100:
		return fmt.Sprintf("%.0f", f)
	case f >= 1:
		return fmt.Sprintf("%.1f", f)
	}
	return fmt.Sprintf("%.2f", f)
}

func orNone(s string) string {
	if s == "" {
		return "nothing"
	}
	return s
}
