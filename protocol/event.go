package protocol

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"unicode/utf8"

	"github.com/walbust/walbust/replication/wal"
)

// DefaultEventsChannel is the Redis channel walbust publishes events on
// unless configured otherwise (events.channel).
const DefaultEventsChannel = "walbust:events"

// Event is what walbust publishes after a batch of invalidations has been
// acknowledged by Redis, for services that keep cache entries in process:
//
//	{"lsn": "16/B374D848", "keys": ["product:1"], "patterns": ["search:users:\\*:*"]}
//
// lsn is the end LSN of the batch's last transaction in pg_lsn text form:
// the applied position (AppliedKey) the batch recorded, which Redis holds
// before the event is published. A re-fence publishes its keys again with
// the re-fenced batch's lsn, which may be behind AppliedKey by then.
// keys are exact keys; patterns are Redis glob patterns (as SCAN MATCH
// reads them) whose row values are already escaped. "flush": true, when
// present, means drop every entry: walbust sends it when a key cannot be
// carried in JSON (invalid UTF-8) and may send it instead of very long
// lists. Readers ignore fields they do not know.
type Event struct {
	LSN      wal.LSN
	Keys     []string
	Patterns []string
	Flush    bool
}

type eventJSON struct {
	LSN      *string   `json:"lsn"`
	Keys     *[]string `json:"keys"`
	Patterns *[]string `json:"patterns"`
	Flush    bool      `json:"flush,omitempty"`
}

// Marshal renders the event as JSON. A key or pattern that is not valid
// UTF-8 cannot travel in JSON unchanged (encoding/json would replace its
// bad bytes), so it is left out and the event says flush instead.
func (e Event) Marshal() ([]byte, error) { return json.Marshal(e) }

// MarshalJSON implements json.Marshaler (see Marshal).
func (e Event) MarshalJSON() ([]byte, error) {
	lsn := e.LSN.String()
	keys, okKeys := validUTF8(e.Keys)
	patterns, okPatterns := validUTF8(e.Patterns)
	return json.Marshal(eventJSON{LSN: &lsn, Keys: &keys, Patterns: &patterns, Flush: e.Flush || !okKeys || !okPatterns})
}

func validUTF8(in []string) ([]string, bool) {
	out := make([]string, 0, len(in))
	ok := true
	for _, s := range in {
		if utf8.ValidString(s) {
			out = append(out, s)
		} else {
			ok = false
		}
	}
	return out, ok
}

// UnmarshalEvent parses an event.
func UnmarshalEvent(b []byte) (Event, error) {
	var e Event
	err := json.Unmarshal(b, &e)
	return e, err
}

// UnmarshalJSON implements json.Unmarshaler: lsn is required, keys and
// patterns may be missing or null, unknown fields are ignored.
func (e *Event) UnmarshalJSON(b []byte) error {
	if bytes.Equal(bytes.TrimSpace(b), []byte("null")) {
		return errors.New("event: null")
	}
	var raw eventJSON
	if err := json.Unmarshal(b, &raw); err != nil {
		return fmt.Errorf("event: %w", err)
	}
	if raw.LSN == nil {
		return errors.New("event: missing lsn")
	}
	lsn, err := wal.ParseLSN(*raw.LSN)
	if err != nil {
		return fmt.Errorf("event: %w", err)
	}
	*e = Event{LSN: lsn, Flush: raw.Flush}
	if raw.Keys != nil {
		e.Keys = *raw.Keys
	}
	if raw.Patterns != nil {
		e.Patterns = *raw.Patterns
	}
	return nil
}

// Touches reports whether the event invalidates key: a flush, one of its
// keys, or a key one of its patterns matches.
func (e Event) Touches(key string) bool {
	if e.Flush {
		return true
	}
	for _, k := range e.Keys {
		if k == key {
			return true
		}
	}
	for _, p := range e.Patterns {
		if Match(p, key) {
			return true
		}
	}
	return false
}
