package protocol

import (
	"fmt"
	"strconv"
)

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
