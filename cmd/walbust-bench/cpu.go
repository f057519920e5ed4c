package main

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// clockTicks is USER_HZ, the unit of utime and stime in /proc/<pid>/stat;
// 100 on every Linux architecture Go supports.
const clockTicks = 100

// procCPUSeconds is the user plus system CPU time pid has used.
func procCPUSeconds(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may contain spaces; fields after it are
	// fixed. utime and stime are fields 14 and 15.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	ut, err1 := strconv.ParseUint(f[11], 10, 64)
	st, err2 := strconv.ParseUint(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: bad utime/stime", pid)
	}
	return float64(ut+st) / clockTicks, nil
}

// redisCPUSeconds is redis-server's user plus system CPU time.
func redisCPUSeconds(ctx context.Context, rdb *redis.Client) (float64, error) {
	info, err := rdb.Info(ctx, "cpu").Result()
	if err != nil {
		return 0, err
	}
	var total float64
	for _, line := range strings.Split(info, "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
		if ok && (k == "used_cpu_sys" || k == "used_cpu_user") {
			x, err := strconv.ParseFloat(v, 64)
			if err != nil {
				return 0, err
			}
			total += x
		}
	}
	return total, nil
}

// senderCPU follows the CPU time of the walsender serving a slot (the
// Postgres process doing the logical decoding), which exits with its
// client, so it is sampled while it runs.
type senderCPU struct {
	stop chan struct{}
	done chan struct{}
	mu   sync.Mutex
	// per walsender pid: CPU at first sight (0 if it started after the
	// watch did) and at last sight.
	first, last map[int]float64
}

func (e *env) watchSender(ctx context.Context, slot string) *senderCPU {
	s := &senderCPU{stop: make(chan struct{}), done: make(chan struct{}), first: map[int]float64{}, last: map[int]float64{}}
	go func() {
		defer close(s.done)
		conn, err := e.pg.Connect(ctx, dbName)
		if err != nil {
			return
		}
		defer conn.Close(context.WithoutCancel(ctx))
		for polls := 0; ; polls++ {
			var pid *int32
			if err := conn.QueryRow(ctx, "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1", slot).Scan(&pid); err == nil && pid != nil {
				if cpu, err := procCPUSeconds(int(*pid)); err == nil {
					s.mu.Lock()
					if _, seen := s.first[int(*pid)]; !seen {
						s.first[int(*pid)] = 0
						if polls == 0 {
							s.first[int(*pid)] = cpu
						}
					}
					s.last[int(*pid)] = cpu
					s.mu.Unlock()
				}
			}
			select {
			case <-s.stop:
				return
			case <-ctx.Done():
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	return s
}

// seconds stops the watch and returns the CPU time the slot's walsenders
// used while it ran.
func (s *senderCPU) seconds() float64 {
	select {
	case <-s.stop:
	default:
		close(s.stop)
	}
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	var total float64
	for pid, last := range s.last {
		total += last - s.first[pid]
	}
	return total
}

// cpuUse is CPU seconds spent by each process involved, per unit of work.
type cpuUse struct {
	ConsumerSeconds float64 `json:"consumer_cpu_seconds"`  // walbust or pg_recvlogical
	SenderSeconds   float64 `json:"walsender_cpu_seconds"` // Postgres decoding for it
	RedisSeconds    float64 `json:"redis_cpu_seconds,omitempty"`
	ConsumerUsPer   float64 `json:"consumer_cpu_us_per_unit"`
	SenderUsPer     float64 `json:"walsender_cpu_us_per_unit"`
	RedisUsPer      float64 `json:"redis_cpu_us_per_unit,omitempty"`
}

func (c *cpuUse) per(units int64) {
	if units <= 0 {
		return
	}
	u := float64(units) / 1e6
	c.ConsumerUsPer, c.SenderUsPer, c.RedisUsPer = c.ConsumerSeconds/u, c.SenderSeconds/u, c.RedisSeconds/u
}
