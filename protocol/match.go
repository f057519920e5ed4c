package protocol

// Match reports whether key matches the Redis glob pattern as SCAN MATCH
// (and KEYS, PSUBSCRIBE) would: '*', '?', '[...]' with '^' negation and
// ranges, '\' escapes, byte by byte. It follows Redis's stringmatchlen,
// quirks included, with one deliberate difference: a range with a byte of
// 0x80 or above, where Redis's answer depends on whether the C compiler's
// char is signed (x86) or not (arm64), matches if either would. Callers
// drop cache entries on a match, so matching too much is the safe side.
func Match(pattern, key string) bool {
	if pattern == "*" {
		// SCAN does not filter at all with "*", so it also returns the
		// empty key, which stringmatchlen alone would not match.
		return true
	}
	skip := false
	return match(pattern, 0, key, 0, &skip, 0)
}

// match is stringmatchlen_impl with indices for pointers: pi and si are
// the positions in pattern and key. Reading pattern past its end yields
// NUL, like the C code reading an sds string's terminator.
func match(p string, pi int, s string, si int, skip *bool, nesting int) bool {
	if nesting > 1000 {
		return false // Redis's protection against abusive patterns
	}
	at := func(i int) byte {
		if i < len(p) {
			return p[i]
		}
		return 0
	}
	for pi < len(p) && si < len(s) {
		switch p[pi] {
		case '*':
			for pi < len(p) && at(pi+1) == '*' {
				pi++
			}
			if len(p)-pi == 1 {
				return true
			}
			for si < len(s) {
				if match(p, pi+1, s, si, skip, nesting+1) {
					return true
				}
				if *skip {
					return false
				}
				si++
			}
			// Nothing after this '*' matches anywhere in the rest of the
			// key, so no earlier '*' can help by matching more.
			*skip = true
			return false
		case '?':
			si++
		case '[':
			pi++
			not := at(pi) == '^'
			if not {
				pi++
			}
			// Two answers: with unsigned and with signed chars (ranges only).
			var mu, ms bool
		class:
			for {
				switch {
				case at(pi) == '\\' && len(p)-pi >= 2:
					pi++
					if p[pi] == s[si] {
						mu, ms = true, true
					}
				case at(pi) == ']':
					break class
				case len(p)-pi == 0:
					pi-- // unterminated class: back up to its last byte
					break class
				case len(p)-pi >= 3 && p[pi+1] == '-':
					lo, hi, c := p[pi], p[pi+2], s[si]
					pi += 2
					if inRange(int(lo), int(hi), int(c)) {
						mu = true
					}
					if inRange(int(int8(lo)), int(int8(hi)), int(int8(c))) {
						ms = true
					}
				default:
					if p[pi] == s[si] {
						mu, ms = true, true
					}
				}
				pi++
			}
			if not {
				mu, ms = !mu, !ms
			}
			if !mu && !ms {
				return false
			}
			si++
		case '\\':
			if len(p)-pi >= 2 {
				pi++
			}
			fallthrough
		default:
			if p[pi] != s[si] {
				return false
			}
			si++
		}
		pi++
		if si == len(s) {
			for at(pi) == '*' {
				pi++
			}
			break
		}
	}
	return pi == len(p) && si == len(s)
}

func inRange(lo, hi, c int) bool {
	if lo > hi {
		lo, hi = hi, lo
	}
	return c >= lo && c <= hi
}
