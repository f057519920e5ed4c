package throwaway

import "syscall"

// portHold keeps a stopped server's port from being handed to another
// process (another test's listener on a free port) before the server
// restarts on it: a socket bound to the port but not listening, so
// connections are still refused, as they are to a server that is down.
type portHold struct{ fd int }

// holdPort binds port on loopback; nil when it cannot (the port is busy,
// e.g. connections in TIME_WAIT): holding is best effort.
func holdPort(port int) *portHold {
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil
	}
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Port: port, Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		syscall.Close(fd)
		return nil
	}
	return &portHold{fd: fd}
}

// release frees the port for the server to listen on again.
func (h *portHold) release() {
	if h != nil {
		syscall.Close(h.fd)
	}
}
