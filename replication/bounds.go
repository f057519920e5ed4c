package replication

import (
	"encoding/binary"
	"fmt"
)

// checkLengths verifies the lengths that row messages declare against the
// bytes actually present, before pglogrepl allocates what they claim: its
// decoder trusts them, so a corrupt 14-byte message could otherwise
// allocate gigabytes. Only the framing is checked; pglogrepl parses.
func checkLengths(data []byte, inStream bool) error {
	if len(data) == 0 {
		return nil
	}
	r := reader{b: data[1:]}
	switch data[0] {
	case 'I', 'U', 'D', 'T':
		if inStream {
			r.skip(4) // xid of the streamed transaction
		}
	}
	switch data[0] {
	case 'I':
		r.skip(4)
		r.tuple(r.byte())
	case 'U':
		r.skip(4)
		if kind := r.byte(); kind == 'K' || kind == 'O' {
			r.tuple(kind)
			// pglogrepl skips the marker after an old tuple unread, so check
			// it here: the new tuple must follow.
			if m := r.byte(); r.err == nil && m != 'N' {
				r.err = fmt.Errorf("expected 'N' after the old tuple, got %q", m)
			}
			r.tuple('N')
		} else {
			r.tuple(kind)
		}
	case 'D':
		r.skip(4)
		r.tuple(r.byte())
	case 'T':
		n := r.u32()
		r.skip(1)
		if r.err == nil && !r.done && uint64(n)*4 > uint64(len(r.b)) {
			r.err = fmt.Errorf("truncate message claims %d relations in %d bytes", n, len(r.b))
		}
	}
	if r.err != nil {
		return fmt.Errorf("malformed pgoutput message (type %q): %w", data[0], r.err)
	}
	return nil
}

type reader struct {
	b    []byte
	err  error
	done bool // met something that is not framing: leave it to the parser
}

func (r *reader) skip(n int) {
	if r.err != nil || r.done {
		return
	}
	if len(r.b) < n {
		r.err = fmt.Errorf("truncated: %d bytes left, %d needed", len(r.b), n)
		return
	}
	r.b = r.b[n:]
}

func (r *reader) byte() byte {
	if r.done {
		return 0
	}
	if r.err != nil || len(r.b) < 1 {
		r.skip(1)
		return 0
	}
	c := r.b[0]
	r.b = r.b[1:]
	return c
}

func (r *reader) u32() uint32 {
	if r.done {
		return 0
	}
	if r.err != nil || len(r.b) < 4 {
		r.skip(4)
		return 0
	}
	v := binary.BigEndian.Uint32(r.b)
	r.b = r.b[4:]
	return v
}

// tuple checks TupleData after its kind byte ('N', 'K' or 'O').
func (r *reader) tuple(kind byte) {
	if r.err != nil || r.done {
		return
	}
	if kind != 'N' && kind != 'K' && kind != 'O' {
		r.done = true // not framing: pglogrepl reports it
		return
	}
	if len(r.b) < 2 {
		r.skip(2)
		return
	}
	cols := int(binary.BigEndian.Uint16(r.b))
	r.b = r.b[2:]
	for range cols {
		switch r.byte() {
		case 't', 'b':
			n := r.u32()
			if r.err == nil && !r.done && uint64(n) > uint64(len(r.b)) {
				r.err = fmt.Errorf("column claims %d bytes, %d left", n, len(r.b))
				return
			}
			r.skip(int(n))
		case 'n', 'u':
		default:
			// pglogrepl would read on past it, trusting what follows.
			r.err = fmt.Errorf("unknown column kind")
			return
		}
		if r.err != nil {
			return
		}
	}
}
