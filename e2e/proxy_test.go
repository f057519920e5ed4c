package e2e

import (
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// tcpProxy forwards loopback TCP connections to a target (Postgres), so a
// test can break the connections walbust holds without touching walbust or
// the server: Cut closes them (both ends see the connection go), Freeze
// turns them into a black hole (a network partition: nothing arrives and
// nothing is closed, so only read deadlines and timeouts notice).
type tcpProxy struct {
	ln     net.Listener
	target string

	mu     sync.Mutex
	pairs  map[*proxyPair]struct{}
	closed bool
	wg     sync.WaitGroup

	accepted atomic.Int64 // client connections accepted in total
}

// proxyPair is one client connection and its upstream connection.
type proxyPair struct {
	client, server net.Conn
	frozen         atomic.Bool
	once           sync.Once
}

func (p *proxyPair) close() {
	p.once.Do(func() {
		p.client.Close()
		p.server.Close()
	})
}

// startTCPProxy listens on a free loopback port and forwards to target until
// the test ends.
func startTCPProxy(t *testing.T, target string) *tcpProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &tcpProxy{ln: ln, target: target, pairs: map[*proxyPair]struct{}{}}
	p.wg.Add(1)
	go p.acceptLoop()
	t.Cleanup(p.Close)
	return p
}

// Addr is the proxy's host:port.
func (p *tcpProxy) Addr() string { return p.ln.Addr().String() }

// Port is the proxy's port.
func (p *tcpProxy) Port() int { return p.ln.Addr().(*net.TCPAddr).Port }

func (p *tcpProxy) acceptLoop() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		p.accepted.Add(1)
		p.wg.Add(1)
		go p.serve(c)
	}
}

func (p *tcpProxy) serve(client net.Conn) {
	defer p.wg.Done()
	server, err := net.DialTimeout("tcp", p.target, 5*time.Second)
	if err != nil {
		// The server is down (being restarted): the client sees the
		// connection close, as it would if it had dialled the server.
		client.Close()
		return
	}
	pair := &proxyPair{client: client, server: server}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		pair.close()
		return
	}
	p.pairs[pair] = struct{}{}
	p.mu.Unlock()

	done := make(chan struct{}, 2)
	go func() { p.pipe(pair, server, client); done <- struct{}{} }()
	go func() { p.pipe(pair, client, server); done <- struct{}{} }()
	<-done
	// One side ended. A live pair is closed whole (Postgres's protocol has
	// no half-close). A frozen one models a partition: the other end must
	// not learn anything, so it stays open until it gives up itself (the
	// walsender's wal_sender_timeout) or the proxy is closed.
	if !pair.frozen.Load() {
		pair.close()
	}
	<-done
	pair.close()
	p.mu.Lock()
	delete(p.pairs, pair)
	p.mu.Unlock()
}

// pipe copies src to dst, discarding the data while the pair is frozen.
func (p *tcpProxy) pipe(pair *proxyPair, dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 && !pair.frozen.Load() {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// Cut closes every current connection and returns how many there were.
// New connections are forwarded as usual.
func (p *tcpProxy) Cut() int {
	p.mu.Lock()
	pairs := make([]*proxyPair, 0, len(p.pairs))
	for pair := range p.pairs {
		pairs = append(pairs, pair)
		// Forgotten now, not when serve notices: a Freeze right after must
		// not count a connection that is already gone.
		delete(p.pairs, pair)
	}
	p.mu.Unlock()
	for _, pair := range pairs {
		pair.close()
	}
	return len(pairs)
}

// Freeze stops forwarding on every current connection without closing any
// of them, and returns how many there were. New connections are forwarded
// as usual.
func (p *tcpProxy) Freeze() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	for pair := range p.pairs {
		pair.frozen.Store(true)
	}
	return len(p.pairs)
}

// Close stops listening, closes every connection and waits for the
// forwarding goroutines.
func (p *tcpProxy) Close() {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	p.ln.Close()
	p.Cut()
	p.wg.Wait()
}

// TestProxy checks the proxy itself, so a fault test failing is never the
// proxy's doing.
func TestProxy(t *testing.T) {
	echo, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer echo.Close()
	go func() {
		for {
			c, err := echo.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				buf := make([]byte, 1024)
				for {
					n, err := c.Read(buf)
					if err != nil {
						return
					}
					if _, err := c.Write(buf[:n]); err != nil {
						return
					}
				}
			}()
		}
	}()
	p := startTCPProxy(t, echo.Addr().String())
	roundTrip := func(c net.Conn, msg string) error {
		c.SetDeadline(time.Now().Add(2 * time.Second))
		if _, err := c.Write([]byte(msg)); err != nil {
			return err
		}
		buf := make([]byte, len(msg))
		for got := 0; got < len(msg); {
			n, err := c.Read(buf[got:])
			if err != nil {
				return err
			}
			got += n
		}
		if string(buf) != msg {
			return errors.New("echo mismatch: " + string(buf))
		}
		return nil
	}
	dial := func() net.Conn {
		c, err := net.Dial("tcp", p.Addr())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}

	c1 := dial()
	if err := roundTrip(c1, "hello"); err != nil {
		t.Fatalf("through the proxy: %v", err)
	}
	if n := p.Cut(); n != 1 {
		t.Errorf("Cut closed %d connections, want 1", n)
	}
	if err := roundTrip(c1, "again"); err == nil {
		t.Error("a cut connection still works")
	}
	c2 := dial()
	if err := roundTrip(c2, "new"); err != nil {
		t.Fatalf("a connection made after Cut: %v", err)
	}
	if n := p.Freeze(); n != 1 {
		t.Errorf("Freeze froze %d connections, want 1", n)
	}
	err = roundTrip(c2, "lost")
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Errorf("a frozen connection: got %v, want a timeout (no data, no close)", err)
	}
	c3 := dial()
	if err := roundTrip(c3, "fresh"); err != nil {
		t.Fatalf("a connection made after Freeze: %v", err)
	}
}
