package protocol

import (
	"encoding/json"
	"reflect"
	"testing"
)

func TestEventMarshal(t *testing.T) {
	for _, tt := range []struct {
		name string
		ev   Event
		want string
	}{
		{"keys and patterns", Event{LSN: 0x16B374D848, Keys: []string{"product:1", "category:7:products"}, Patterns: []string{`search:users:\*:*`}},
			`{"lsn":"16/B374D848","keys":["product:1","category:7:products"],"patterns":["search:users:\\*:*"]}`},
		{"empty lists are [] not null", Event{LSN: 1}, `{"lsn":"0/1","keys":[],"patterns":[]}`},
		{"flush", Event{LSN: 1, Flush: true}, `{"lsn":"0/1","keys":[],"patterns":[],"flush":true}`},
		{"invalid UTF-8 becomes flush", Event{LSN: 1, Keys: []string{"ok", "bad\xff"}},
			`{"lsn":"0/1","keys":["ok"],"patterns":[],"flush":true}`},
		{"invalid UTF-8 pattern becomes flush", Event{LSN: 1, Patterns: []string{"\xc3("}},
			`{"lsn":"0/1","keys":[],"patterns":[],"flush":true}`},
		{"JSON escaping", Event{LSN: 1, Keys: []string{"a\"b\\c\n<é>"}}, `{"lsn":"0/1","keys":["a\"b\\c\n\u003cé\u003e"],"patterns":[]}`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			b, err := tt.ev.Marshal()
			if err != nil {
				t.Fatal(err)
			}
			if string(b) != tt.want {
				t.Fatalf("Marshal = %s\nwant      %s", b, tt.want)
			}
			back, err := UnmarshalEvent(b)
			if err != nil {
				t.Fatal(err)
			}
			if back.LSN != tt.ev.LSN {
				t.Errorf("round trip LSN = %d, want %d", back.LSN, tt.ev.LSN)
			}
		})
	}
}

func TestEventUnmarshal(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want Event
	}{
		{`{"lsn":"0/A","keys":["k"],"patterns":["p*"]}`, Event{LSN: 10, Keys: []string{"k"}, Patterns: []string{"p*"}}},
		{`{"lsn":"0/a"}`, Event{LSN: 10}},
		{`{"lsn":"0/A","keys":null,"patterns":null}`, Event{LSN: 10}},
		{`{"lsn":"0/A","flush":true,"future":{"x":1}}`, Event{LSN: 10, Flush: true}},
	} {
		got, err := UnmarshalEvent([]byte(tt.in))
		if err != nil {
			t.Errorf("UnmarshalEvent(%s): %v", tt.in, err)
			continue
		}
		if !reflect.DeepEqual(got, tt.want) {
			t.Errorf("UnmarshalEvent(%s) = %+v, want %+v", tt.in, got, tt.want)
		}
	}
	for _, in := range []string{``, `null`, `[]`, `{}`, `{"keys":["k"]}`, `{"lsn":5}`, `{"lsn":"5"}`, `{"lsn":"0/A","keys":"k"}`, `{"lsn":"0/A","keys":[1]}`, `{"lsn":"0/A"`} {
		if got, err := UnmarshalEvent([]byte(in)); err == nil {
			t.Errorf("UnmarshalEvent(%s) = %+v, want an error", in, got)
		}
	}
	// Through encoding/json too, as a field of something else.
	var wrapped struct{ E Event }
	if err := json.Unmarshal([]byte(`{"E":{"lsn":"1/0"}}`), &wrapped); err != nil || wrapped.E.LSN != 1<<32 {
		t.Errorf("nested: %+v, %v", wrapped, err)
	}
}

func TestEventTouches(t *testing.T) {
	ev := Event{Keys: []string{"product:1"}, Patterns: []string{"category:*:products", `search:\*`}}
	for key, want := range map[string]bool{
		"product:1":           true,
		"product:10":          false,
		"category:7:products": true,
		"category:7":          false,
		"search:*":            true,
		"search:x":            false,
	} {
		if got := ev.Touches(key); got != want {
			t.Errorf("Touches(%q) = %v, want %v", key, got, want)
		}
	}
	if !(Event{Flush: true}).Touches("anything") {
		t.Error("a flush event must touch every key")
	}
}
