package main

import (
	"fmt"
	"io"
	"math"
	"strings"
	"text/tabwriter"
	"time"
)

type groupReport struct {
	name          string
	mode          byte
	lang          string // mode (b): the readers' language
	replica       bool
	firstError    string // the first failed read of a reader process
	reads, errors int64
	stale         []int64 // per window
	cached        int
	staleKeys     int
	invisible     int // stale keys explained by a fence applied before its commit was visible
	// invisibleReads: stale reads at the headline window explained so
	invisibleReads int64
	examples       []string
	loads          int64 // mode (b): loader calls
	fillsLost      int64 // mode (b): fills refused by the fence
}

type report struct {
	cfg                 config
	groups              []groupReport
	writes, writeErrors int64
	firstWriteError     string
	duration, settle    time.Duration
	kills               int
	downtime            time.Duration
	unattributed        []string // cached keys filled by no language of the run
}

// lang sums a language's fenced groups.
func (r *report) lang(l string) (reads, stale int64, cached, staleKeys, invisible int) {
	h := r.headlineIndex()
	for _, g := range r.groups {
		if g.mode == 'b' && g.lang == l {
			reads += g.reads
			stale += g.stale[h]
			cached += g.cached
			staleKeys += g.staleKeys
			invisible += g.invisible
		}
	}
	return
}

// nines is -log10 of the stale fraction: "3.2 nines" is 99.94% consistent.
func nines(stale, reads int64) string {
	switch {
	case reads == 0:
		return "n/a"
	case stale == 0:
		return fmt.Sprintf("≥%.1f", math.Log10(float64(reads)))
	}
	return fmt.Sprintf("%.1f", -math.Log10(float64(stale)/float64(reads)))
}

func (r *report) headlineIndex() int {
	for i, w := range r.cfg.Windows {
		if w == r.cfg.Headline {
			return i
		}
	}
	return len(r.cfg.Windows) - 1
}

// mode sums a mode's groups.
func (r *report) mode(m byte) (reads, stale int64, cached, staleKeys int) {
	h := r.headlineIndex()
	for _, g := range r.groups {
		if g.mode == m {
			reads += g.reads
			stale += g.stale[h]
			cached += g.cached
			staleKeys += g.staleKeys
		}
	}
	return
}

func (r *report) print(w io.Writer) {
	fmt.Fprintf(w, "\nwalbust consistency: %.1fs of writes (%d transactions, %d failed), primary + replica (recovery_min_apply_delay %v)\n",
		r.duration.Seconds(), r.writes, r.writeErrors, r.cfg.ApplyDelay)
	if r.kills > 0 {
		fmt.Fprintf(w, "walbust killed with SIGKILL %d time(s) mid-run, streaming again after %v\n", r.kills, r.downtime.Round(time.Millisecond))
	}
	fmt.Fprintf(w, "walbust and the replica caught up %v after the writers stopped; readers ran until then\n", r.settle.Round(time.Millisecond))
	fmt.Fprintf(w, "re-fence: replicas: {from_primary: true, wait_max: %v}\n", r.cfg.WaitMax)
	if r.firstWriteError != "" {
		fmt.Fprintf(w, "first write error: %s\n", r.firstWriteError)
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 2, 8, 2, ' ', tabwriter.AlignRight)
	var hdr []string
	for _, win := range r.cfg.Windows {
		hdr = append(hdr, fmt.Sprintf("stale>%dms", win.Milliseconds()))
	}
	fmt.Fprintf(tw, "readers\treads\terrors\t%s\tcached keys\tstale keys left\tloads\tfills refused\t\n", strings.Join(hdr, "\t"))
	for _, g := range r.groups {
		var cells []string
		for _, s := range g.stale {
			cells = append(cells, fmt.Sprint(s))
		}
		loads, lost := "-", "-"
		if g.mode == 'b' {
			loads, lost = fmt.Sprint(g.loads), fmt.Sprint(g.fillsLost)
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%d\t%d\t%s\t%s\t\n", g.name, g.reads, g.errors, strings.Join(cells, "\t"), g.cached, g.staleKeys, loads, lost)
	}
	tw.Flush()
	fmt.Fprintln(w)
	hi := r.headlineIndex()
	h := r.cfg.Windows[hi]
	for _, m := range []struct {
		mode byte
		desc string
	}{{'a', "mode (a) delete + textbook reader"}, {'b', "mode (b) fence + cacheaside"}} {
		reads, stale, cached, staleKeys := r.mode(m.mode)
		fmt.Fprintf(w, "%s: %d reads, %s nines consistent after %d ms (%d stale reads); %d stale keys left of %d cached\n",
			m.desc, reads, nines(stale, reads), h.Milliseconds(), stale, staleKeys, cached)
		for _, g := range r.groups {
			if g.mode != m.mode {
				continue
			}
			extra := ""
			if g.invisibleReads > 0 || g.invisible > 0 {
				extra = fmt.Sprintf("; fenced before visible: %d of the stale reads, %d of the stale keys", g.invisibleReads, g.invisible)
			}
			fmt.Fprintf(w, "  %s readers: %d reads, %s nines consistent after %d ms, %d stale keys left%s\n",
				strings.TrimSpace(g.name[3:]), g.reads, nines(g.stale[hi], g.reads), h.Milliseconds(), g.staleKeys, extra)
		}
	}
	if len(r.cfg.Langs) > 0 {
		fmt.Fprintf(w, "fenced readers per language, all over the same keys at the same time (stale keys: left by that language's fills):\n")
	}
	for _, l := range r.cfg.Langs {
		reads, stale, cached, staleKeys, _ := r.lang(l)
		fmt.Fprintf(w, "  %-7s %d reads, %s nines consistent after %d ms (%d stale reads); %d stale keys left of %d it cached\n",
			l+":", reads, nines(stale, reads), h.Milliseconds(), stale, staleKeys, cached)
	}
	for _, g := range r.groups {
		for _, ex := range g.examples {
			fmt.Fprintf(w, "  stale in %s: %s\n", g.name, ex)
		}
		if g.firstError != "" {
			fmt.Fprintf(w, "  first failed read in %s: %s\n", g.name, g.firstError)
		}
	}
	for _, u := range r.unattributed {
		fmt.Fprintf(w, "  unattributed: %s\n", u)
	}
}

// verdict checks the acceptance criteria; it returns the failures and
// notes. Stale keys whose load had seen the tombstone of the write it
// missed (walbust fenced a commit PostgreSQL had flushed but not yet made
// visible) are named as such: walbust waits for visibility, so they mean a
// regression.
func (r *report) verdict() (failures, notes []string) {
	for _, g := range r.groups {
		if g.mode != 'b' || g.staleKeys == 0 {
			continue
		}
		side := "primary"
		if g.replica {
			side = "replica (with the re-fence on)"
		}
		failures = append(failures, fmt.Sprintf("mode (b) %s readers on the %s left %d stale keys (%d fenced before visible)", g.lang, side, g.staleKeys, g.invisible))
	}
	for _, u := range r.unattributed {
		failures = append(failures, "cached keys no reader of the run could have filled: "+u)
	}
	for _, l := range r.cfg.Langs {
		if reads, _, _, _, _ := r.lang(l); r.cfg.LangReads > 0 && reads < r.cfg.LangReads {
			failures = append(failures, fmt.Sprintf("%s fenced readers served %d reads, fewer than -lang-reads %d (-max-duration reached)", l, reads, r.cfg.LangReads))
		}
	}
	if _, _, _, n := r.mode('a'); n == 0 {
		notes = append(notes, "mode (a) left no stale keys this run: the race did not strike (more rows, readers or a longer run make it likelier)")
	}
	if r.writes == 0 {
		failures = append(failures, "no writes committed")
	}
	for _, g := range r.groups {
		if g.reads == 0 {
			failures = append(failures, g.name+": no reads")
		}
	}
	return failures, notes
}
