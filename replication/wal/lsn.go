package wal

import (
	"errors"
	"fmt"
	"strconv"
)

// LSN is a position in the write-ahead log. Zero means none.
type LSN uint64

// String renders lsn the way PostgreSQL prints pg_lsn: two upper-case hex
// numbers, the high and low 32 bits, separated by '/' ("16/B374D848").
func (lsn LSN) String() string {
	return fmt.Sprintf("%X/%X", uint32(lsn>>32), uint32(lsn))
}

// ParseLSN parses PostgreSQL's pg_lsn text form: 1-8 hex digits (either
// case), '/', 1-8 hex digits. Nothing else is accepted (no spaces, no sign,
// no 0x): the text comes from Postgres, files and Redis values alike.
func ParseLSN(s string) (LSN, error) {
	slash := -1
	for i := 0; i < len(s); i++ {
		if s[i] == '/' {
			slash = i
			break
		}
	}
	if slash < 0 {
		return 0, fmt.Errorf("lsn %q: want X/Y (two hex numbers)", s)
	}
	hi, err1 := parseHex32(s[:slash])
	lo, err2 := parseHex32(s[slash+1:])
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("lsn %q: %w", s, err)
	}
	return LSN(uint64(hi)<<32 | uint64(lo)), nil
}

func parseHex32(s string) (uint32, error) {
	if len(s) < 1 || len(s) > 8 {
		return 0, fmt.Errorf("%q: want 1-8 hex digits", s)
	}
	for i := 0; i < len(s); i++ {
		if !isHex(s[i]) {
			return 0, fmt.Errorf("%q: want 1-8 hex digits", s)
		}
	}
	v, err := strconv.ParseUint(s, 16, 32)
	return uint32(v), err
}

func isHex(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}
