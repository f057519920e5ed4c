package shadow

import (
	"fmt"
	"maps"
	"slices"
	"sort"
	"time"

	"github.com/walbust/walbust/mapping"
	"github.com/walbust/walbust/replication/wal"
)

// Aggregator counts, per table and rule, what each side rendered, and the
// invalidations only one side rendered. Both sides see the same
// transactions; a difference is counted per transaction (a key the
// candidate renders in one commit and the running registry in another is
// a difference in both).
type Aggregator struct {
	regs     [2]*mapping.Registry
	examples int

	transactions int
	notCompared  int // transactions left out of the diff: a lookup failed
	tables       map[string]*tableAcc
	rules        map[*mapping.Rule]*ruleAcc
	lookups      [2]map[string]*lookupAcc // by SQL
	only         [2]map[diffGroupKey]*diffAcc
	warnings     []string
	warned       map[string]bool
}

type tableAcc struct {
	changes int
	ops     map[wal.Op]int
	keys    [2]int
	pattern [2]int
}

type ruleAcc struct {
	keys, patterns int
}

type lookupAcc struct {
	n, errors int
	reused    int // of n: results the other side's query gave
	firstErr  string
	took      []time.Duration // sampled: the first maxSamples
}

const maxSamples = 100_000

type diffGroupKey struct {
	rule    *mapping.Rule
	table   string
	pattern bool
}

type diffAcc struct {
	count    int
	examples []string
}

// NewAggregator counts for the two registries, keeping up to examples
// example keys per difference.
func NewAggregator(running, candidate *mapping.Registry, examples int) *Aggregator {
	if examples <= 0 {
		examples = 5
	}
	a := &Aggregator{regs: [2]*mapping.Registry{running, candidate}, examples: examples,
		tables: map[string]*tableAcc{}, rules: map[*mapping.Rule]*ruleAcc{}, warned: map[string]bool{}}
	for i := range a.lookups {
		a.lookups[i] = map[string]*lookupAcc{}
		a.only[i] = map[diffGroupKey]*diffAcc{}
	}
	return a
}

func (a *Aggregator) table(name string) *tableAcc {
	t := a.tables[name]
	if t == nil {
		t = &tableAcc{ops: map[wal.Op]int{}}
		a.tables[name] = t
	}
	return t
}

// Warn records a warning for the report, once.
func (a *Aggregator) Warn(msg string) {
	if !a.warned[msg] {
		a.warned[msg] = true
		a.warnings = append(a.warnings, msg)
	}
}

func (a *Aggregator) identityGap(table, file string, gap mapping.Ref) {
	a.Warn(fmt.Sprintf("%s:%d:%d: the candidate reads the old value of %s.%s, which the table's replica identity does not send: "+
		"UPDATEs and DELETEs will miss those keys (ALTER TABLE %s REPLICA IDENTITY FULL)", file, gap.Line, gap.Column, table, gap.Name, table))
}

func (a *Aggregator) resolveFailed(side Side, err error) {
	a.Warn(fmt.Sprintf("a lookup query of the %s deps.yaml failed: %v", side, err))
}

func (a *Aggregator) lookup(side Side, sql string) *lookupAcc {
	l := a.lookups[side][sql]
	if l == nil {
		l = &lookupAcc{}
		a.lookups[side][sql] = l
	}
	l.n++
	return l
}

// Reused counts a lookup the side did not run: the other side ran the same
// query with the same arguments in the same transaction.
func (a *Aggregator) Reused(side Side, sql string) { a.lookup(side, sql).reused++ }

// Lookup records one lookup query the side ran and how long it took.
func (a *Aggregator) Lookup(side Side, sql string, took time.Duration, err error) {
	l := a.lookup(side, sql)
	if err != nil {
		l.errors++
		if l.firstErr == "" {
			l.firstErr = err.Error()
		}
		return
	}
	if len(l.took) < maxSamples {
		l.took = append(l.took, took)
	}
}

type rendered struct {
	pattern bool
	key     string
}

// Transaction counts one committed transaction: its row changes by table
// and operation, and both sides' resolved plans. complete is false when a
// lookup failed: the transaction is counted but not compared.
func (a *Aggregator) Transaction(changes []tableOp, running, candidate *mapping.Plan, complete bool) {
	a.transactions++
	for _, c := range changes {
		t := a.table(c.table)
		t.changes += c.n
		t.ops[c.op] += c.n
	}
	plans := [2]*mapping.Plan{running, candidate}
	var invs [2][]mapping.Invalidation
	var sets [2]map[rendered]bool
	for side, p := range plans {
		invs[side] = p.Invalidations()
		sets[side] = make(map[rendered]bool, len(invs[side]))
		for _, inv := range invs[side] {
			sets[side][rendered{inv.Pattern, inv.Key}] = true
			t := a.table(inv.Table)
			if inv.Pattern {
				t.pattern[side]++
			} else {
				t.keys[side]++
			}
			if inv.Rule != nil {
				r := a.rules[inv.Rule]
				if r == nil {
					r = &ruleAcc{}
					a.rules[inv.Rule] = r
				}
				if inv.Pattern {
					r.patterns++
				} else {
					r.keys++
				}
			}
		}
	}
	if !complete {
		a.notCompared++
		return
	}
	for side := range invs {
		other := sets[1-side]
		for _, inv := range invs[side] {
			if other[rendered{inv.Pattern, inv.Key}] {
				continue
			}
			k := diffGroupKey{rule: inv.Rule, table: inv.Table, pattern: inv.Pattern}
			d := a.only[side][k]
			if d == nil {
				d = &diffAcc{}
				a.only[side][k] = d
			}
			d.count++
			if len(d.examples) < a.examples && !slices.Contains(d.examples, inv.Key) {
				d.examples = append(d.examples, inv.Key)
			}
		}
	}
}

// tableLookups is how many lookups the side's rules of the table ran, by
// their SQL (a query two tables share counts for both).
func (a *Aggregator) tableLookups(side Side, table string) int {
	t := a.regs[side].Tables[table]
	if t == nil {
		return 0
	}
	seen, n := map[string]bool{}, 0
	for _, r := range t.Rules {
		if r.Query != nil && !seen[r.Query.SQL] {
			seen[r.Query.SQL] = true
			if l := a.lookups[side][r.Query.SQL]; l != nil {
				n += l.n
			}
		}
	}
	return n
}

// Report is the aggregation over elapsed, with the keyspace for SCAN costs.
func (a *Aggregator) Report(elapsed time.Duration, ks Keyspace) *Report {
	secs := elapsed.Seconds()
	rate := func(n int) float64 {
		if secs <= 0 {
			return 0
		}
		return float64(n) / secs
	}
	rep := &Report{
		Running: a.regs[Running].File, Candidate: a.regs[Candidate].File, Seconds: secs,
		Transactions: a.transactions, NotCompared: a.notCompared, Keyspace: ks, Warnings: append([]string{}, a.warnings...),
		Tables: []TableReport{},
	}
	names := map[string]bool{}
	for n := range a.tables {
		names[n] = true
	}
	for _, reg := range a.regs {
		for n := range reg.Tables {
			names[n] = true
		}
	}
	for _, name := range slices.Sorted(maps.Keys(names)) {
		acc := a.tables[name]
		if acc == nil {
			acc = &tableAcc{ops: map[wal.Op]int{}}
		}
		tr := TableReport{Table: name, InRunning: a.regs[Running].Tables[name] != nil, InCandidate: a.regs[Candidate].Tables[name] != nil,
			Changes: acc.changes, ChangesPerSec: rate(acc.changes), Ops: map[string]int{}, Rules: []RuleReport{}}
		rep.Changes += acc.changes
		for op, n := range acc.ops {
			tr.Ops[op.String()] = n
		}
		for _, side := range []Side{Running, Candidate} {
			tot := SideTotals{Keys: acc.keys[side], Patterns: acc.pattern[side], Lookups: a.tableLookups(side, name)}
			tot.KeysPerSec, tot.PatternsPerSec, tot.LookupsPerSec = rate(tot.Keys), rate(tot.Patterns), rate(tot.Lookups)
			tot.Scan = scanCost(tot.PatternsPerSec, tot.Patterns, ks)
			if side == Running {
				tr.Running = tot
			} else {
				tr.Candidate = tot
			}
		}
		if t := a.regs[Candidate].Tables[name]; t != nil {
			tr.Rules = a.ruleReports(a.regs[Candidate].File, t, rate, ks)
		}
		rep.Tables = append(rep.Tables, tr)
	}
	for _, side := range []Side{Candidate, Running} {
		ds := DiffSide{Groups: []DiffGroup{}}
		for k, d := range a.only[side] {
			g := DiffGroup{Table: k.table, Pattern: k.pattern, Count: d.count, Examples: slices.Clone(d.examples)}
			if k.rule != nil {
				g.Rule, g.Position = k.rule.Name, fmt.Sprintf("%s:%d:%d", a.regs[side].File, k.rule.Line, k.rule.Column)
			}
			if k.pattern {
				ds.Patterns += d.count
			} else {
				ds.Keys += d.count
			}
			ds.Groups = append(ds.Groups, g)
		}
		sort.Slice(ds.Groups, func(i, j int) bool {
			gi, gj := ds.Groups[i], ds.Groups[j]
			if gi.Table != gj.Table {
				return gi.Table < gj.Table
			}
			if gi.Position != gj.Position {
				return gi.Position < gj.Position
			}
			return !gi.Pattern && gj.Pattern
		})
		if side == Candidate {
			rep.Diff.OnlyCandidate = ds
		} else {
			rep.Diff.OnlyRunning = ds
		}
	}
	return rep
}

func (a *Aggregator) ruleReports(file string, t *mapping.Table, rate func(int) float64, ks Keyspace) []RuleReport {
	rules := slices.Clone(t.Rules)
	if t.OnTruncate != nil {
		rules = append(rules, t.OnTruncate)
	}
	out := []RuleReport{}
	for _, r := range rules {
		acc := a.rules[r]
		if acc == nil {
			acc = &ruleAcc{}
		}
		rr := RuleReport{Rule: r.Name, Position: fmt.Sprintf("%s:%d:%d", file, r.Line, r.Column),
			Keys: acc.keys, Patterns: acc.patterns, KeysPerSec: rate(acc.keys), PatternsPerSec: rate(acc.patterns)}
		rr.Scan = scanCost(rr.PatternsPerSec, rr.Patterns, ks)
		if r.Query != nil {
			rr.Query = r.Query.SQL
			if l := a.lookups[Candidate][r.Query.SQL]; l != nil {
				rr.Lookups, rr.LookupErrors, rr.LookupError = l.n, l.errors, l.firstErr
				rr.LookupsPerSec = rate(l.n)
				rr.Latency = latency(l.took)
			}
			for _, o := range rules {
				if o != r && o.Query != nil && o.Query.SQL == r.Query.SQL {
					rr.SharedWith = append(rr.SharedWith, o.Name)
				}
			}
		}
		out = append(out, rr)
	}
	return out
}

// scanCost is what patternsPerSec pattern invalidations cost: each SCANs
// the whole keyspace of every master, COUNT ScanCount at a time.
func scanCost(patternsPerSec float64, patterns int, ks Keyspace) *ScanCost {
	if patterns == 0 {
		return nil
	}
	if !ks.Known {
		return &ScanCost{Known: false}
	}
	calls := 0
	for _, n := range ks.PerMaster {
		calls += max(1, int((n+ScanCount-1)/ScanCount))
	}
	return &ScanCost{Known: true, KeysExaminedPerSec: patternsPerSec * float64(ks.Keys), CallsPerSec: patternsPerSec * float64(calls)}
}

// ScanCount is the COUNT hint of walbust's pattern SCANs (the
// invalidator's default).
const ScanCount = 1000

func latency(took []time.Duration) *Latency {
	if len(took) == 0 {
		return nil
	}
	s := slices.Clone(took)
	slices.Sort(s)
	pct := func(p float64) float64 {
		i := int(p*float64(len(s))+0.5) - 1
		i = min(max(i, 0), len(s)-1)
		return ms(s[i])
	}
	return &Latency{P50Ms: pct(0.50), P99Ms: pct(0.99), MaxMs: ms(s[len(s)-1]), Samples: len(s)}
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
