package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"

	"github.com/walbust/walbust/cacheaside"
	"github.com/walbust/walbust/protocol"
	"github.com/walbust/walbust/replication/wal"
)

// group is one quarter of the readers: a mode and a database to read.
type group struct {
	name    string // e.g. "(a) primary", "(b) replica python"
	mode    byte   // 'a' textbook reader + delete, 'b' cacheaside + fence
	lang    string // mode b: the readers' language (go, python, node); the key spaces are shared
	replica bool
	prefix  string // key prefix, e.g. "del:p:"
	table   string
	db      *pgxpool.Pool
	clients []*cacheaside.Client // mode b in Go: a few "processes"

	reads  atomic.Int64
	errors atomic.Int64
	stale  []atomic.Int64 // per window
	// invisible: stale reads at the headline window of values whose load
	// had seen the tombstone of the write they missed (mode (b), primary).
	invisible atomic.Int64
}

func (g *group) key(id int) string { return g.prefix + strconv.Itoa(id) }

// workload runs writers and readers against env.
type workload struct {
	e       *env
	cfg     config
	hist    *history
	groups  []*group
	writes  atomic.Int64
	wErrors atomic.Int64
	firstWE atomic.Value // first writer error, for the report

	loads   *loadServer   // the subprocess readers' database reads
	procs   []*readerProc // the Python and Node reader processes, while running
	stopped []*readerProc // and once stopped
}

func newWorkload(e *env) (*workload, error) {
	w := &workload{e: e, cfg: e.cfg, hist: newHistory(e.cfg.Rows)}
	mk := func(name string, mode byte, lang string, replica bool, prefix, table string) *group {
		db := e.primDB
		if replica {
			db = e.replDB
		}
		return &group{name: name, mode: mode, lang: lang, replica: replica, prefix: prefix, table: table, db: db,
			stale: make([]atomic.Int64, len(e.cfg.Windows))}
	}
	w.groups = []*group{
		mk("(a) primary", 'a', "", false, "del:p:", "items_delete"),
		mk("(a) replica", 'a', "", true, "del:r:", "items_delete"),
	}
	// Every language's fenced readers read the same two key spaces.
	for _, l := range e.cfg.Langs {
		w.groups = append(w.groups,
			mk("(b) primary "+l, 'b', l, false, "fen:p:", "items_fence"),
			mk("(b) replica "+l, 'b', l, true, "fen:r:", "items_fence"))
	}
	for _, g := range w.groups {
		if g.mode != 'b' || g.lang != "go" {
			continue
		}
		for range 2 { // two processes per group, each with its own pool
			rdb := redis.NewClient(&redis.Options{Addr: e.redis.Addr(), PoolSize: 32})
			c, err := cacheaside.New(rdb, cacheaside.Options{TTL: time.Hour})
			if err != nil {
				return nil, err
			}
			g.clients = append(g.clients, c)
		}
	}
	return w, nil
}

func (w *workload) close() {
	_ = w.stopProcs()
	for _, g := range w.groups {
		for _, c := range g.clients {
			c.Close()
		}
	}
}

func (w *workload) modeReads(mode byte) int64 {
	var n int64
	for _, g := range w.groups {
		if g.mode == mode {
			n += g.reads.Load()
		}
	}
	return n
}

// langReads is the fewest reads a language's fenced readers have served.
func (w *workload) langReads() int64 {
	least := int64(-1)
	for _, l := range w.cfg.Langs {
		var n int64
		for _, g := range w.groups {
			if g.mode == 'b' && g.lang == l {
				n += g.reads.Load()
			}
		}
		if least < 0 || n < least {
			least = n
		}
	}
	return max(least, 0)
}

// perLang describes each language's fenced reads so far.
func (w *workload) perLang() string {
	var parts []string
	for _, l := range w.cfg.Langs {
		var n int64
		for _, g := range w.groups {
			if g.mode == 'b' && g.lang == l {
				n += g.reads.Load()
			}
		}
		parts = append(parts, fmt.Sprintf("%s %d", l, n))
	}
	return strings.Join(parts, ", ")
}

// writers update random rows of both tables in one transaction each, at
// about cfg.WriteRate transactions a second in total, until stop.
func (w *workload) writers(ctx context.Context, stop *atomic.Bool, wg *sync.WaitGroup) {
	per := time.Duration(float64(time.Second) * float64(w.cfg.Writers) / float64(w.cfg.WriteRate))
	for range w.cfg.Writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			next := time.Now()
			for !stop.Load() && ctx.Err() == nil {
				id := 1 + rand.IntN(w.cfg.Rows)
				if err := w.write(ctx, id); err != nil {
					w.wErrors.Add(1)
					w.firstWE.CompareAndSwap(nil, err.Error())
				}
				next = next.Add(per)
				if d := time.Until(next); d > 0 {
					time.Sleep(d)
				} else {
					next = time.Now()
				}
			}
		}()
	}
}

func (w *workload) write(ctx context.Context, id int) error {
	var a, b int64
	var before string
	err := pgx.BeginFunc(ctx, w.e.primDB, func(tx pgx.Tx) error {
		if err := tx.QueryRow(ctx, "UPDATE items_delete SET val = val + 1 WHERE id = $1 RETURNING val", id).Scan(&a); err != nil {
			return err
		}
		if err := tx.QueryRow(ctx, "UPDATE items_fence SET val = val + 1 WHERE id = $1 RETURNING val", id).Scan(&b); err != nil {
			return err
		}
		// A lower bound of this commit's LSN (other sessions may write WAL
		// before our commit record), and above the previous write's commit
		// LSN, which we waited for on the row lock.
		return tx.QueryRow(ctx, "SELECT pg_current_wal_insert_lsn()::text").Scan(&before)
	})
	if err != nil {
		return fmt.Errorf("write row %d: %w", id, err)
	}
	if a != b {
		return fmt.Errorf("row %d: items_delete.val %d != items_fence.val %d", id, a, b)
	}
	lower, err := wal.ParseLSN(before)
	if err != nil {
		return err
	}
	w.hist.committed(id, b, lower)
	w.writes.Add(1)
	return nil
}

// readers run cfg.Readers goroutines per Go group until stop (the
// Python and Node groups are served by their processes: startProcs).
func (w *workload) readers(ctx context.Context, stop *atomic.Bool, wg *sync.WaitGroup) {
	for _, g := range w.groups {
		if g.mode == 'b' && g.lang != "go" {
			continue
		}
		for i := range w.cfg.Readers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for !stop.Load() && ctx.Err() == nil {
					id := 1 + rand.IntN(w.cfg.Rows)
					start := time.Now()
					var v int64
					var err error
					if g.mode == 'a' {
						v, err = w.readTextbook(ctx, g, id)
					} else {
						v, err = w.readFenced(ctx, g, g.clients[i%len(g.clients)], id)
					}
					if err != nil {
						g.errors.Add(1)
						continue
					}
					w.record(g, id, start, v)
				}
			}()
		}
	}
}

// record judges one read of g, begun at start, that returned v.
func (w *workload) record(g *group, id int, start time.Time, v int64) {
	g.reads.Add(1)
	for k, win := range w.cfg.Windows {
		if v < w.hist.required(id, start, win) {
			g.stale[k].Add(1)
			if win == w.cfg.Headline && g.mode == 'b' && !g.replica && w.hist.fencedBeforeVisible(id, v) {
				g.invisible.Add(1)
			}
		}
	}
}

// Mode (b) caches "<val>/<lang>": the value, and which language's reader
// filled the key.
func payload(v int64, lang string) []byte {
	return append(strconv.AppendInt(nil, v, 10), "/"+lang...)
}

func parsePayload(s string) (v int64, lang string, err error) {
	num, lang, ok := strings.Cut(s, "/")
	if !ok || lang == "" {
		return 0, "", fmt.Errorf("payload %q is not <val>/<lang>", s)
	}
	v, err = strconv.ParseInt(num, 10, 64)
	return v, lang, err
}

// stall sometimes pauses between reading the database and writing the
// cache, as a GC pause or a slow network would: the populate race's window.
func (w *workload) stall() {
	if w.cfg.Stall > 0 && rand.IntN(10) == 0 {
		time.Sleep(rand.N(w.cfg.Stall))
	}
}

func (w *workload) query(ctx context.Context, g *group, id int) (int64, error) {
	var v int64
	err := g.db.QueryRow(ctx, "SELECT val FROM "+g.table+" WHERE id = $1", id).Scan(&v)
	return v, err
}

// readTextbook is cache-aside as usually written: GET; on a miss read the
// database and SET.
func (w *workload) readTextbook(ctx context.Context, g *group, id int) (int64, error) {
	key := g.key(id)
	s, err := w.e.rdb.Get(ctx, key).Result()
	if err == nil {
		return strconv.ParseInt(s, 10, 64)
	}
	if !errors.Is(err, redis.Nil) {
		return 0, err
	}
	v, err := w.query(ctx, g, id)
	if err != nil {
		return 0, err
	}
	w.stall()
	return v, w.e.rdb.Set(ctx, key, strconv.FormatInt(v, 10), time.Hour).Err()
}

// readFenced is the cacheaside client over the fence action.
func (w *workload) readFenced(ctx context.Context, g *group, c *cacheaside.Client, id int) (int64, error) {
	b, err := c.Get(ctx, g.key(id), func(ctx context.Context, o cacheaside.Observation) ([]byte, error) {
		v, err := w.query(ctx, g, id)
		if err != nil {
			return nil, err
		}
		if !g.replica {
			w.hist.loaded(id, v, o.FenceLSN)
		}
		w.stall()
		return payload(v, g.lang), nil
	})
	if err != nil {
		return 0, err
	}
	v, _, err := parsePayload(string(b))
	return v, err
}

// keyCount is what one filler left in a key space: the cached keys, the
// stale ones, and of those the ones fenced before visible.
type keyCount struct {
	cached, stale, invisible int
	examples                 []string
}

// staleKeys compares every cached key of a key space with the primary,
// counting per filler: "" for mode (a), else the language whose reader
// filled the key (the payload's tag; "?" when there is none). invisible
// counts the stale keys of mode (b)'s primary key space whose value was
// loaded after the load had seen the tombstone of the very write it
// missed: walbust fenced that commit before PostgreSQL made it visible.
func (w *workload) staleKeys(ctx context.Context, mode byte, replica bool, prefix, table string) (map[string]*keyCount, error) {
	rows, err := w.e.primDB.Query(ctx, "SELECT id, val FROM "+table+" ORDER BY id")
	if err != nil {
		return nil, err
	}
	type row struct{ id, val int64 }
	var all []row
	var r row
	if _, err := pgx.ForEachRow(rows, []any{&r.id, &r.val}, func() error { all = append(all, r); return nil }); err != nil {
		return nil, err
	}
	out := map[string]*keyCount{}
	count := func(by string) *keyCount {
		if out[by] == nil {
			out[by] = &keyCount{}
		}
		return out[by]
	}
	for _, r := range all {
		key := prefix + strconv.FormatInt(r.id, 10)
		s, err := w.e.rdb.Get(ctx, key).Result()
		if errors.Is(err, redis.Nil) {
			continue
		}
		if err != nil {
			return nil, err
		}
		by := ""
		var v int64
		if mode == 'b' {
			c := protocol.Decode(s)
			if c.Kind != protocol.KindValue || c.Envelope.NotFound {
				continue // a tombstone or a lease: nothing cached
			}
			s = string(c.Envelope.Payload)
			if v, by, err = parsePayload(s); err != nil {
				by = "?"
			}
		} else {
			v, err = strconv.ParseInt(s, 10, 64)
		}
		kc := count(by)
		kc.cached++
		if err == nil && v == r.val {
			continue
		}
		kc.stale++
		note := ""
		if mode == 'b' && !replica && err == nil && w.hist.fencedBeforeVisible(int(r.id), v) {
			kc.invisible++
			note = " (its load had seen the tombstone of the write of " + strconv.FormatInt(v+1, 10) + ": fenced before visible)"
		}
		if len(kc.examples) < 3 {
			kc.examples = append(kc.examples, fmt.Sprintf("%s=%s, database %d%s", key, s, r.val, note))
		}
	}
	return out, nil
}
