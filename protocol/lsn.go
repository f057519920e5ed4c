package protocol

import (
	"errors"
	"fmt"
	"strconv"
)

// FormatLSN renders an LSN the way PostgreSQL prints pg_lsn: two upper-case
// hex numbers, the high and low 32 bits, separated by '/' ("16/B374D848").
func FormatLSN(lsn uint64) string {
	return fmt.Sprintf("%X/%X", uint32(lsn>>32), uint32(lsn))
}

// ParseLSN parses PostgreSQL's pg_lsn text form: 1-8 hex digits (either
// case), '/', 1-8 hex digits.
func ParseLSN(s string) (uint64, error) {
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
	return uint64(hi)<<32 | uint64(lo), nil
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

// formatDecimal and parseDecimal are the LSN form inside stored values:
// decimal, no sign, no leading zeros, so that Lua can compare two LSNs as
// strings (longer is larger; equal lengths compare bytewise).
func formatDecimal(v uint64) string { return strconv.FormatUint(v, 10) }

func parseDecimal(s string) (uint64, error) {
	if s == "" || len(s) > 20 || (len(s) > 1 && s[0] == '0') {
		return 0, fmt.Errorf("%q: want a decimal number without leading zeros", s)
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, fmt.Errorf("%q: want a decimal number without leading zeros", s)
		}
	}
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%q: out of range", s)
	}
	return v, nil
}
