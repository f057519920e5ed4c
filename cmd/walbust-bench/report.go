package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

type results struct {
	Command  string          `json:"command"`
	Started  time.Time       `json:"started"`
	Seconds  float64         `json:"seconds"`
	Machine  machine         `json:"machine"`
	Scale    scale           `json:"scale"`
	Drain    *drainResult    `json:"drain,omitempty"`
	Writers  *writersResult  `json:"writers,omitempty"`
	Lag      *lagResult      `json:"lag,omitempty"`
	Memory   *memoryResult   `json:"memory,omitempty"`
	Cluster  *clusterResult  `json:"cluster,omitempty"`
	RYW      *rywResult      `json:"read_your_writes,omitempty"`
	Patterns *patternsResult `json:"patterns,omitempty"`
	Targets  []target        `json:"targets"`
	Errors   []string        `json:"errors,omitempty"`
}

type machine struct {
	CPUs         int    `json:"cpus"`
	CPUModel     string `json:"cpu_model"`
	MemoryMB     int64  `json:"memory_mb"`
	Kernel       string `json:"kernel"`
	Postgres     string `json:"postgres"`
	Redis        string `json:"redis"`
	Go           string `json:"go"`
	Walbust      string `json:"walbust"`
	LoadAvgStart string `json:"loadavg_start"`
	LoadAvgEnd   string `json:"loadavg_end"`
}

func (m *machine) fill(ctx context.Context, e *env) {
	m.CPUs = runtime.NumCPU()
	m.Go = runtime.Version()
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
		f.Close()
	}
	if kb, err := procFileKB("/proc/meminfo", "MemTotal"); err == nil {
		m.MemoryMB = kb / 1024
	}
	_ = e.db.QueryRow(ctx, "SHOW server_version").Scan(&m.Postgres)
	if info, err := e.rdb.Info(ctx, "server").Result(); err == nil {
		for _, line := range strings.Split(info, "\n") {
			if v, ok := strings.CutPrefix(strings.TrimSpace(line), "redis_version:"); ok {
				m.Redis = v
			}
		}
	}
	if out, err := exec.CommandContext(ctx, e.binary, "version").Output(); err == nil {
		m.Walbust = strings.TrimSpace(string(out))
	}
}

func procFileKB(path, field string) (int64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			return strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		}
	}
	return 0, fmt.Errorf("no %s in %s", field, path)
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return ""
	}
	return strings.Join(f[:3], " ")
}

// target is one of the benchmark's targets and how this run did against it.
type target struct {
	Name     string `json:"name"`
	Target   string `json:"target"`
	Measured string `json:"measured"`
	Result   string `json:"result"` // PASS, FAIL, or "not run"
}

func verdict(ok bool) string {
	if ok {
		return "PASS"
	}
	return "FAIL"
}

func evaluate(r *results) []target {
	var ts []target
	notRun := func(name, tgt string) { ts = append(ts, target{name, tgt, "-", "not run"}) }
	if d := r.Drain; d != nil && len(d.Runs) > 0 {
		ts = append(ts, target{"drain rate vs pg_recvlogical", ">= 0.9x",
			fmt.Sprintf("%.2fx (%.0f vs %.0f rows/s)", d.Ratio, d.WalbustRowsPerSec, d.RecvRowsPerSec), verdict(d.Ratio >= 0.9)})
		ts = append(ts, target{"peak RSS draining", "< 100 MB", fmt.Sprintf("%.0f MB", d.PeakRSSMB), verdict(d.PeakRSSMB < 100)})
	} else {
		notRun("drain rate vs pg_recvlogical", ">= 0.9x")
		notRun("peak RSS draining", "< 100 MB")
	}
	limits := map[int]float64{1000: 10, 5000: 50}
	found := map[int]bool{}
	if r.Lag != nil {
		for _, ph := range r.Lag.Phases {
			if ph.TargetTPS == 0 {
				found[0] = true
				ts = append(ts, target{"lag flat out", "bounded",
					fmt.Sprintf("%.0f tx/s: p99 %.1f ms first third, %.1f ms last third; catch-up %.2fs; lost %d",
						ph.AchievedTPS, ph.FirstThird.P99Ms, ph.LastThird.P99Ms, ph.CatchUpSeconds, ph.Lost), verdict(ph.Bounded)})
				continue
			}
			limit, ok := limits[ph.TargetTPS]
			if !ok {
				continue
			}
			found[ph.TargetTPS] = true
			ok = ph.P99Ms < limit && ph.Lost == 0 && ph.Samples > 0
			measured := fmt.Sprintf("p99 %.1f ms (p50 %.1f, max %.1f; %.0f tx/s achieved; lost %d)", ph.P99Ms, ph.P50Ms, ph.MaxMs, ph.AchievedTPS, ph.Lost)
			if ph.AchievedTPS < 0.95*float64(ph.TargetTPS) {
				measured += "; writers fell short of the rate"
			}
			ts = append(ts, target{fmt.Sprintf("lag p99 at %d tx/s", ph.TargetTPS), fmt.Sprintf("< %.0f ms", limit), measured, verdict(ok)})
		}
	}
	for _, rate := range []int{1000, 5000} {
		if !found[rate] {
			notRun(fmt.Sprintf("lag p99 at %d tx/s", rate), fmt.Sprintf("< %.0f ms", limits[rate]))
		}
	}
	if !found[0] {
		notRun("lag flat out", "bounded")
	}
	if w := r.Writers; w != nil && w.NoSlotTPS > 0 {
		ts = append(ts, target{"writer rate with walbust vs no slot", ">= 0.9x",
			fmt.Sprintf("%.2fx (%.0f vs %.0f tps); pg_recvlogical %.2fx; NOTIFY trigger+listener %.2fx", w.WalbustRatio, w.WalbustTPS, w.NoSlotTPS, w.RecvRatio, w.NotifyRatio),
			verdict(w.WalbustRatio >= 0.9)})
	} else {
		notRun("writer rate with walbust vs no slot", ">= 0.9x")
	}
	if m := r.Memory; m != nil && len(m.Variants) > 0 {
		v := m.Variants[0]
		name := "peak RSS on a 1,000,000-row transaction"
		if m.Rows != 1000000 {
			name = fmt.Sprintf("peak RSS on a %d-row transaction (target is for 1,000,000)", m.Rows)
		}
		measured := fmt.Sprintf("%.0f MB (%s)", v.PeakRSSMB, v.Deps)
		if len(m.Variants) > 1 {
			measured += fmt.Sprintf("; %.0f MB with on_truncate collapse", m.Variants[1].PeakRSSMB)
		}
		ts = append(ts, target{name, "< 200 MB", measured, verdict(v.PeakRSSMB < 200)})
	} else {
		notRun("peak RSS on a 1,000,000-row transaction", "< 200 MB")
	}
	if p := r.Patterns; p != nil && len(p.Variants) > 0 {
		ts = append(ts, patternTargets(p)...)
	}
	return rywEvaluate(r, ts)
}

func printTable(out io.Writer, r *results) {
	m := r.Machine
	fmt.Fprintf(out, "\nwalbust bench, scale %s, %.0fs: %d CPUs (%s), %d MB RAM, PostgreSQL %s, Redis %s, %s, %s\n",
		r.Scale.Name, r.Seconds, m.CPUs, m.CPUModel, m.MemoryMB, m.Postgres, m.Redis, m.Go, m.Walbust)
	fmt.Fprintf(out, "load average: %s at start, %s at end\ncommand: %s\n\n", m.LoadAvgStart, m.LoadAvgEnd, r.Command)
	tw := tabwriter.NewWriter(out, 2, 8, 2, ' ', tabwriter.AlignRight)
	row := func(cells ...string) {
		// Left-align the text columns: pad them to their own width.
		fmt.Fprintf(tw, "%-10s  %-62s\t%s\t%s\t%s\t\n", cells[0], cells[1], cells[2], cells[3], cells[4])
	}
	f0 := func(x float64) string { return fmt.Sprintf("%.0f", x) }
	f2 := func(x float64) string { return fmt.Sprintf("%.2f", x) }
	row("part", "measure", "walbust", "baseline", "ratio")
	if d := r.Drain; d != nil && len(d.Runs) > 0 {
		row("1 drain", fmt.Sprintf("backlog: %d single-row txs + %d x %d rows", d.SingleRowTxs, d.BigTxs, d.BigTxRows),
			fmt.Sprintf("%d rows", d.RowChanges), fmt.Sprintf("%.0f MB WAL", float64(d.WALBytes)/1e6), "")
		row("", fmt.Sprintf("row changes/s, median of %d (baseline: pg_recvlogical)", len(d.Runs)), f0(d.WalbustRowsPerSec), f0(d.RecvRowsPerSec), f2(d.Ratio))
		perTx := float64(d.Transactions) / float64(d.RowChanges)
		row("", "transactions/s", f0(d.WalbustRowsPerSec*perTx), f0(d.RecvRowsPerSec*perTx), f2(d.Ratio))
		for i, run := range d.Runs {
			row("", fmt.Sprintf("run %d, CPU us/row: consumer / walsender / redis", i+1),
				fmt.Sprintf("%.1f / %.1f / %.1f", run.WalbustCPU.ConsumerUsPer, run.WalbustCPU.SenderUsPer, run.WalbustCPU.RedisUsPer),
				fmt.Sprintf("%.1f / %.1f / -", run.RecvCPU.ConsumerUsPer, run.RecvCPU.SenderUsPer), "")
			first := "recv first"
			if run.WalbustFirst {
				first = "walbust first"
			}
			row("", fmt.Sprintf("run %d, seconds (%s; keys left %d/%d)", i+1, first, run.KeysLeft, run.KeysChecked),
				f2(run.WalbustSeconds), f2(run.RecvSeconds), f2(run.Ratio))
		}
	}
	if l := r.Lag; l != nil {
		for i, ph := range l.Phases {
			part := ""
			if i == 0 {
				part = "2 lag"
			}
			row(part, fmt.Sprintf("%s (%.0f achieved): commit->gone p50/p99/max ms", ph.Name, ph.AchievedTPS),
				fmt.Sprintf("%.1f / %.1f / %.1f", ph.P50Ms, ph.P99Ms, ph.MaxMs), "", "")
			if ph.TargetTPS == 0 {
				row("", "flat out: p50 first / last third, ms", fmt.Sprintf("%.1f / %.1f", ph.FirstThird.P50Ms, ph.LastThird.P50Ms), "", "")
				row("", "flat out: slot lag first / last third / max, KB",
					fmt.Sprintf("%.0f / %.0f / %.0f", ph.SlotLagBytesFirstThird/1024, ph.SlotLagBytesLastThird/1024, float64(ph.SlotLagBytesMax)/1024), "", "")
				row("", "flat out: catch-up after writers stop, s", f2(ph.CatchUpSeconds), "", "")
			}
			if ph.Lost > 0 {
				row("", ph.Name+": keys never removed", strconv.Itoa(ph.Lost), "", "")
			}
		}
	}
	if w := r.Writers; w != nil && w.NoSlotTPS > 0 {
		row("3 writers", fmt.Sprintf("pgbench UPDATE tps, %d clients, %.0fs, median of %d: no slot", w.Clients, w.Seconds, len(w.Runs)/4),
			"", f0(w.NoSlotTPS), "1.00")
		row("", "pg_recvlogical consuming (decoding alone)", "", f0(w.RecvTPS), f2(w.RecvRatio))
		row("", "walbust consuming", f0(w.WalbustTPS), f0(w.NoSlotTPS), f2(w.WalbustRatio))
		row("", "pg_notify trigger + LISTEN client (the alternative)", "", f0(w.NotifyTPS), f2(w.NotifyRatio))
		for _, run := range w.Runs {
			if run.CPU != nil && run.Config == "walbust" {
				row("", fmt.Sprintf("run %d walbust, CPU us/tx: walbust / walsender / redis", run.Run),
					fmt.Sprintf("%.1f / %.1f / %.1f", run.CPU.ConsumerUsPer, run.CPU.SenderUsPer, run.CPU.RedisUsPer), "", "")
			}
			if run.CPU != nil && run.Config == "pg_recvlogical" {
				row("", fmt.Sprintf("run %d pg_recvlogical, CPU us/tx: consumer / walsender", run.Run),
					"", fmt.Sprintf("%.1f / %.1f", run.CPU.ConsumerUsPer, run.CPU.SenderUsPer), "")
			}
		}
	}
	part := "4 memory"
	if d := r.Drain; d != nil && len(d.Runs) > 0 {
		row(part, "peak RSS draining the backlog, MB", f0(d.PeakRSSMB), "", "")
		part = ""
	}
	if mem := r.Memory; mem != nil {
		for _, v := range mem.Variants {
			row(part, fmt.Sprintf("peak RSS, one %d-row UPDATE, %s, MB", mem.Rows, v.Deps), f0(v.PeakRSSMB), "", "")
			row("", fmt.Sprintf("  applied %.1fs after commit", v.ApplySeconds), "", "", "")
			part = ""
		}
	}
	if c := r.Cluster; c != nil && len(c.Runs) > 0 {
		clusterRows(c, row)
	}
	if r.RYW != nil {
		for _, cells := range rywRows(r.RYW) {
			row(cells...)
		}
	}
	if p := r.Patterns; p != nil && len(p.Variants) > 0 {
		patternRows(p, row)
	}
	tw.Flush()
	fmt.Fprintln(out, "\ntargets:")
	tw = tabwriter.NewWriter(out, 2, 8, 2, ' ', 0)
	for _, t := range r.Targets {
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t\n", t.Result, t.Name, t.Target, t.Measured)
	}
	tw.Flush()
	for _, e := range r.Errors {
		fmt.Fprintf(out, "\nERROR %s\n", e)
	}
}
