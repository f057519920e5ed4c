package cacheaside

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/walbust/walbust/protocol"
)

// stampedeChildEnv makes the test binary a stampede reader process (see
// TestMain): the Redis address, the hot key and how many readers to run.
const stampedeChildEnv = "WALBUST_STAMPEDE_CHILD"

// The stampede in real processes: 200 readers in four processes (this test
// binary run again) miss on a just-fenced hot key at the same moment; the
// lease lets exactly one of them call the loader.
func TestStampedeAcrossProcesses(t *testing.T) {
	const processes, readersPerProcess = 4, 50
	rdb := redisClient(t)
	flush(t, rdb)
	ctx := context.Background()
	const key, gate = "product:hot", "stampede:gate"
	if err := rdb.Set(ctx, key, protocol.Envelope{SoftExpiry: time.Now().Add(time.Hour), Nonce: protocol.NewToken(), Payload: []byte("old")}.Encode(), time.Hour).Err(); err != nil {
		t.Fatal(err)
	}
	walbustFence(t, rdb, key, 4242, time.Minute)

	outs := make([]bytes.Buffer, processes)
	cmds := make([]*exec.Cmd, processes)
	for i := range cmds {
		cmd := exec.Command(os.Args[0], "-test.run", "^$")
		cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s %s %s %d", stampedeChildEnv, srv.Addr(), key, gate, readersPerProcess))
		cmd.Stdout, cmd.Stderr = &outs[i], &outs[i]
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		cmds[i] = cmd
	}
	// Each child says it is ready (connected, readers waiting), then all are
	// released at once.
	deadline := time.Now().Add(30 * time.Second)
	for {
		n, err := rdb.Get(ctx, gate+":ready").Int()
		if err == nil && n == processes {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d of %d reader processes ready within 30s", n, processes)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := rdb.Set(ctx, gate, "go", time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	var total int
	for i, cmd := range cmds {
		if err := cmd.Wait(); err != nil {
			t.Fatalf("reader process %d: %v\n%s", i, err, outs[i].String())
		}
		var loads int
		if _, err := fmt.Sscanf(outs[i].String(), "loads %d", &loads); err != nil {
			t.Fatalf("reader process %d printed %q", i, outs[i].String())
		}
		total += loads
	}
	if total != 1 {
		t.Errorf("%d readers in %d processes called the loader %d times, want exactly once", processes*readersPerProcess, processes, total)
	}
	if c, _ := stored(t, rdb, key); c.Kind != protocol.KindValue || string(c.Envelope.Payload) != "new" {
		t.Errorf("Redis holds %v %q, want the new value", c.Kind, c.Envelope.Payload)
	}
}

// stampedeChild is one reader process: it runs its readers once the gate
// opens and prints how often its loader ran. Any reader's failure or wrong
// value fails the process.
func stampedeChild() int {
	var addr, key, gate string
	var readers int
	if _, err := fmt.Sscanf(os.Getenv(stampedeChildEnv), "%s %s %s %d", &addr, &key, &gate, &readers); err != nil {
		fmt.Println("bad", stampedeChildEnv, err)
		return 2
	}
	ctx := context.Background()
	rdb := redis.NewClient(&redis.Options{Addr: addr, PoolSize: readers})
	defer rdb.Close()
	c, err := New(rdb, Options{LeaseWait: 10 * time.Second})
	if err != nil {
		fmt.Println(err)
		return 1
	}
	defer c.Close()
	var loads, bad atomic.Int64
	var ready, done sync.WaitGroup
	start := make(chan struct{})
	for range readers {
		ready.Add(1)
		done.Add(1)
		go func() {
			defer done.Done()
			ready.Done()
			<-start
			v, err := c.Get(ctx, key, func(ctx context.Context, o Observation) ([]byte, error) {
				loads.Add(1)
				time.Sleep(50 * time.Millisecond) // the database query
				return []byte("new"), nil
			})
			if err != nil || string(v) != "new" {
				bad.Add(1)
			}
		}()
	}
	ready.Wait()
	if err := rdb.Incr(ctx, gate+":ready").Err(); err != nil {
		fmt.Println(err)
		return 1
	}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(time.Millisecond) {
		if rdb.Exists(ctx, gate).Val() == 1 {
			break
		}
		if time.Now().After(deadline) {
			fmt.Println("the gate never opened")
			return 1
		}
	}
	close(start)
	done.Wait()
	if n := bad.Load(); n > 0 {
		fmt.Printf("loads %d\n%d readers failed or got another value\n", loads.Load(), n)
		return 1
	}
	fmt.Println("loads " + strconv.FormatInt(loads.Load(), 10))
	return 0
}
