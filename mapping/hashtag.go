package mapping

// HasHashTag reports whether every key the template renders (or, for a
// pattern, every key it matches) carries a Redis Cluster hash tag: a
// non-empty text between the key's first '{' and the next '}', which alone
// decides the key's slot. A key with a tag shares its slot with every
// companion derived from it ("{user:5}" and "{user:5}:stale"), so one
// script may touch both.
//
// The template's own text must open the tag before any column value (a
// value could hold a '{' of its own) and close it. The tag's content may be
// a value ("user:{{{id}}}" renders "user:{5}"): an empty value, or one
// starting with '}', leaves that one key untagged, which walbust handles
// (without a script) when it happens.
func (t *Template) HasHashTag(pattern bool) bool {
	opened, content := false, false
	for _, s := range t.segments {
		if s.column != "" {
			if !opened {
				return false
			}
			content = true
			continue
		}
		for i := 0; i < len(s.literal); i++ {
			c := s.literal[i]
			glob := pattern && (c == '*' || c == '?' || c == '[' || c == '\\')
			switch {
			case !opened:
				if glob {
					return false // could match a '{' of its own
				}
				opened = c == '{'
			case !content:
				if c == '}' || glob {
					return false // "{}" is no tag: the whole key is hashed
				}
				content = true
			case c == '}':
				return true
			}
		}
	}
	return false
}
