package throwaway

import (
	"errors"
	"net"
	"syscall"
	"testing"
)

// A held port refuses connections, as a stopped server's does, and cannot
// be bound by anyone else until it is released.
func TestPortHold(t *testing.T) {
	port, err := FreePort()
	if err != nil {
		t.Fatal(err)
	}
	h := holdPort(port)
	if h == nil {
		t.Fatalf("could not hold free port %d", port)
	}
	addr := (&net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port}).String()
	if c, err := net.Dial("tcp", addr); err == nil {
		c.Close()
		t.Fatalf("dial %s succeeded while held, want connection refused", addr)
	} else if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial %s while held: %v, want connection refused", addr, err)
	}
	if l, err := net.Listen("tcp", addr); err == nil {
		l.Close()
		t.Fatalf("listen on %s succeeded while held", addr)
	}
	h.release()
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listen on %s after release: %v", addr, err)
	}
	l.Close()
}
