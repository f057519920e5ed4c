// Package audit finds the Redis keys no deps.yaml rule can produce: keys
// walbust never invalidates, which live on their TTL alone. It SCANs
// (rate-limited), groups keys into families by shape, and matches every
// key against every template and pattern of the registry.
package audit

import (
	"context"
	"errors"
	"fmt"
	"io"
	"regexp"
	"sort"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/walbust/walbust/mapping"
	"github.com/walbust/walbust/protocol"
)

// Options configure a Run.
type Options struct {
	Client  redis.UniversalClient // every master of a cluster is scanned
	Matcher *mapping.Matcher
	// Rate caps the keys scanned per second (0: no cap).
	Rate int
	// SampleTTL is how many keys per uncovered family get a PTTL (default
	// 50); Examples how many keys per family the report shows (default 3).
	SampleTTL, Examples int
}

// Report is what an audit found.
type Report struct {
	Scanned int64 `json:"scanned"`
	Covered int64 `json:"covered"` // keys some rule can produce
	// Rules counts covered keys per template, by its deps.yaml text.
	Rules     map[string]int64 `json:"covered_by_template"`
	Uncovered []Family         `json:"uncovered"`
	Own       []Family         `json:"walbust_keys"`
	Seconds   float64          `json:"seconds"`
}

// Family is keys of one shape (Shape) no rule produces, or one kind of
// walbust's own keys (tombstone, lease, version, stale, position).
type Family struct {
	Shape string `json:"shape"`
	Count int64  `json:"count"`
	// Sampled keys got a PTTL; NoTTL of them had none (persist forever).
	Sampled      int      `json:"ttl_sampled,omitempty"`
	NoTTL        int      `json:"ttl_none,omitempty"`
	NoTTLShare   float64  `json:"share_without_ttl"`
	Examples     []string `json:"examples"`
	sampledNames []string
}

// Kinds of walbust's own keys.
const (
	OwnPosition  = "position (walbust:applied:*, walbust:settled:*)"
	OwnTombstone = "tombstone (" + protocol.TombstonePrefix + "...)"
	OwnLease     = "lease (" + protocol.LeasePrefix + "...)"
	OwnVersion   = "version key (action: bump)"
	OwnStale     = "stale copy (action: stale)"
)

var (
	uuidRe  = regexp.MustCompile(`[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}`)
	hexRe   = regexp.MustCompile(`[0-9a-fA-F]{8,}`)
	digitRe = regexp.MustCompile(`[0-9]+`)
)

// Shape is a key's family: uuids become {uuid}, runs of 8 or more hex
// digits that mix digits and letters {hex}, and digit runs {n}.
func Shape(key string) string {
	s := uuidRe.ReplaceAllString(key, "{uuid}")
	s = hexRe.ReplaceAllStringFunc(s, func(run string) string {
		if strings.ContainsAny(run, "0123456789") && strings.ContainsAny(run, "abcdefABCDEF") {
			return "{hex}"
		}
		return run
	})
	return digitRe.ReplaceAllString(s, "{n}")
}

// Classification of one key.
type class struct {
	own     string // kind of walbust key, or ""
	covered string // template source, or ""
}

// classify says what key is; value is the start of its value when it is a
// string ("" otherwise or unknown).
func classify(m *mapping.Matcher, key, value string) class {
	switch {
	case strings.HasPrefix(key, "walbust:applied:{") || strings.HasPrefix(key, "walbust:settled:{"):
		return class{own: OwnPosition}
	case strings.HasPrefix(value, protocol.TombstonePrefix):
		return class{own: OwnTombstone}
	case strings.HasPrefix(value, protocol.LeasePrefix):
		return class{own: OwnLease}
	}
	g, ok := m.Match(key)
	switch {
	case !ok:
		return class{}
	case g.Companion == "version":
		return class{own: OwnVersion}
	case g.Companion == "stale":
		return class{own: OwnStale}
	}
	return class{covered: g.Source}
}

type state struct {
	opts      Options
	mu        sync.Mutex
	rep       Report
	uncovered map[string]*Family
	own       map[string]*Family
	start     time.Time
}

// Run scans every key and returns the report. ctx ending stops it with
// ctx's error.
func Run(ctx context.Context, opts Options) (*Report, error) {
	if opts.SampleTTL <= 0 {
		opts.SampleTTL = 50
	}
	if opts.Examples <= 0 {
		opts.Examples = 3
	}
	st := &state{opts: opts, uncovered: map[string]*Family{}, own: map[string]*Family{}, start: time.Now()}
	st.rep.Rules = map[string]int64{}
	var err error
	if cc, ok := opts.Client.(*redis.ClusterClient); ok {
		err = cc.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error { return st.scanNode(ctx, c) })
	} else {
		err = st.scanNode(ctx, opts.Client)
	}
	if err != nil {
		return nil, err
	}
	// TTL samples, per uncovered family.
	for _, f := range st.uncovered {
		if err := sampleTTL(ctx, opts.Client, f); err != nil {
			return nil, err
		}
	}
	st.rep.Uncovered = sorted(st.uncovered)
	st.rep.Own = sorted(st.own)
	st.rep.Seconds = time.Since(st.start).Seconds()
	return &st.rep, nil
}

func (st *state) scanNode(ctx context.Context, c redis.Cmdable) error {
	count := int64(1000)
	if st.opts.Rate > 0 {
		count = min(count, int64(st.opts.Rate))
	}
	var cursor uint64
	for {
		keys, next, err := c.Scan(ctx, cursor, "*", count).Result()
		if err != nil {
			return fmt.Errorf("redis SCAN: %w", err)
		}
		if err := st.page(ctx, c, keys); err != nil {
			return err
		}
		if next == 0 {
			return nil
		}
		cursor = next
		if err := st.pace(ctx); err != nil {
			return err
		}
	}
}

// pace sleeps until the keys scanned so far fit the rate.
func (st *state) pace(ctx context.Context) error {
	if st.opts.Rate <= 0 {
		return ctx.Err()
	}
	st.mu.Lock()
	due := st.start.Add(time.Duration(float64(st.rep.Scanned) / float64(st.opts.Rate) * float64(time.Second)))
	st.mu.Unlock()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(time.Until(due)):
		return nil
	}
}

// page classifies one SCAN page, reading the start of every value to
// tell tombstones and leases (GETRANGE; other types answer WRONGTYPE).
func (st *state) page(ctx context.Context, c redis.Cmdable, keys []string) error {
	if len(keys) == 0 {
		return nil
	}
	pipe := c.Pipeline()
	vals := make([]*redis.StringCmd, len(keys))
	for i, k := range keys {
		vals[i] = pipe.GetRange(ctx, k, 0, 15)
	}
	if _, err := pipe.Exec(ctx); err != nil && ctx.Err() != nil {
		return ctx.Err()
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	for i, k := range keys {
		v, err := vals[i].Result()
		if err != nil && !errors.Is(err, redis.Nil) && !redis.HasErrorPrefix(err, "WRONGTYPE") {
			return fmt.Errorf("redis GETRANGE %q: %w", k, err)
		}
		st.rep.Scanned++
		cl := classify(st.opts.Matcher, k, v)
		switch {
		case cl.own != "":
			st.add(st.own, cl.own, k)
		case cl.covered != "":
			st.rep.Covered++
			st.rep.Rules[cl.covered]++
		default:
			f := st.add(st.uncovered, Shape(k), k)
			if len(f.sampledNames) < st.opts.SampleTTL {
				f.sampledNames = append(f.sampledNames, k)
			}
		}
	}
	return nil
}

func (st *state) add(m map[string]*Family, shape, key string) *Family {
	f := m[shape]
	if f == nil {
		f = &Family{Shape: shape}
		m[shape] = f
	}
	f.Count++
	if len(f.Examples) < st.opts.Examples {
		f.Examples = append(f.Examples, key)
	}
	return f
}

func sampleTTL(ctx context.Context, c redis.UniversalClient, f *Family) error {
	pipe := c.Pipeline()
	cmds := make([]*redis.DurationCmd, len(f.sampledNames))
	for i, k := range f.sampledNames {
		cmds[i] = pipe.PTTL(ctx, k)
	}
	if _, err := pipe.Exec(ctx); err != nil && ctx.Err() != nil {
		return ctx.Err()
	}
	for _, cmd := range cmds {
		d, err := cmd.Result()
		if err != nil {
			continue // gone since the scan
		}
		switch {
		case d == -1: // go-redis: no TTL
			f.Sampled++
			f.NoTTL++
		case d >= 0:
			f.Sampled++
		}
	}
	if f.Sampled > 0 {
		f.NoTTLShare = float64(f.NoTTL) / float64(f.Sampled)
	}
	return nil
}

func sorted(m map[string]*Family) []Family {
	out := make([]Family, 0, len(m))
	for _, f := range m {
		out = append(out, *f)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Count != out[j].Count {
			return out[i].Count > out[j].Count
		}
		return out[i].Shape < out[j].Shape
	})
	return out
}

// Over returns the uncovered families with more than max keys.
func (r *Report) Over(max int64) []Family {
	var out []Family
	for _, f := range r.Uncovered {
		if f.Count > max {
			out = append(out, f)
		}
	}
	return out
}

// Print writes the report as tables.
func (r *Report) Print(w io.Writer) {
	fmt.Fprintf(w, "scanned %d keys in %.1fs: %d covered by deps.yaml, %d in %d uncovered families, %d walbust keys\n\n",
		r.Scanned, r.Seconds, r.Covered, r.uncoveredKeys(), len(r.Uncovered), r.ownKeys())
	tw := tabwriter.NewWriter(w, 2, 8, 2, ' ', 0)
	if len(r.Uncovered) == 0 {
		fmt.Fprintln(w, "no uncovered keys: every key matches a template or pattern of deps.yaml")
	} else {
		fmt.Fprintln(w, "uncovered families (no rule can produce them: they live on their TTL alone):")
		fmt.Fprintln(tw, "  family\tkeys\twithout TTL\texamples\t")
		for _, f := range r.Uncovered {
			fmt.Fprintf(tw, "  %s\t%d\t%.0f%% of %d sampled\t%s\t\n", f.Shape, f.Count, 100*f.NoTTLShare, f.Sampled, strings.Join(quoteAll(f.Examples), " "))
		}
		tw.Flush()
	}
	if len(r.Own) > 0 {
		fmt.Fprintln(w, "\nwalbust's own keys:")
		for _, f := range r.Own {
			fmt.Fprintf(tw, "  %s\t%d\t%s\t\n", f.Shape, f.Count, strings.Join(quoteAll(f.Examples), " "))
		}
		tw.Flush()
	}
	if len(r.Rules) > 0 {
		fmt.Fprintln(w, "\ncovered keys per template:")
		names := make([]string, 0, len(r.Rules))
		for n := range r.Rules {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			fmt.Fprintf(tw, "  %s\t%d\t\n", n, r.Rules[n])
		}
		tw.Flush()
	}
}

func (r *Report) uncoveredKeys() (n int64) {
	for _, f := range r.Uncovered {
		n += f.Count
	}
	return n
}

func (r *Report) ownKeys() (n int64) {
	for _, f := range r.Own {
		n += f.Count
	}
	return n
}

func quoteAll(ss []string) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = fmt.Sprintf("%q", s)
	}
	return out
}
