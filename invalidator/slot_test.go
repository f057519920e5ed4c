package invalidator

import "testing"

func TestKeySlot(t *testing.T) {
	// Values from the Redis Cluster specification and CLUSTER KEYSLOT.
	tests := []struct {
		key  string
		slot uint16
	}{
		{"123456789", 0x31C3 % slotCount}, // the CRC16-XMODEM check value
		{"foo", 12182},
		{"bar", 5061},
		{"hello", 866},
		{"{user1000}.following", 3443},
		{"{user1000}.followers", 3443},
		{"user1000", 3443},
		{"foo{}{bar}", keySlot("foo{}{bar}")}, // an empty tag: the whole key
		{"foo{{bar}}zap", keySlot("{bar")},    // the tag is "{bar"
		{"foo{bar}{zap}", keySlot("bar")},
		{"", 0},
	}
	for _, tt := range tests {
		if got := keySlot(tt.key); got != tt.slot {
			t.Errorf("keySlot(%q) = %d, want %d", tt.key, got, tt.slot)
		}
	}
	if keySlot("foo{}{bar}") == keySlot("bar") {
		t.Error("an empty hash tag must not make {bar} the tag")
	}
}
