package protocol

import (
	"testing"

	"github.com/walbust/walbust/replication/wal"
)

// The vectors are twinned in clients/python/tests/test_formats.py and
// clients/node/test/formats.test.mjs.
func TestRefreshMark(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want RefreshMark
	}{
		{"", RefreshMark{}},
		{"16/B374D848", RefreshMark{LSN: 0x16_B374D848}},
		{"0/1", RefreshMark{LSN: 1}},
		{"16/B374D848 stale 16/B3750000", RefreshMark{LSN: 0x16_B374D848, Stale: true, StaleLSN: 0x16_B3750000}},
		{"0/0 stale 1/0", RefreshMark{Stale: true, StaleLSN: 1 << 32}},
		{"garbage", RefreshMark{}},
		{"garbage stale 0/10", RefreshMark{Stale: true, StaleLSN: 0x10}},
		{"FFFFFFFF/FFFFFFFF", RefreshMark{LSN: wal.LSN(1<<64 - 1)}},
	} {
		if got := ParseRefreshMark(tt.in); got != tt.want {
			t.Errorf("ParseRefreshMark(%q) = %+v, want %+v", tt.in, got, tt.want)
		}
	}
	if got := RefreshLSNKey("{product:42}"); got != "{product:42}:lsn" {
		t.Errorf("RefreshLSNKey = %q", got)
	}
}

func TestHasHashTag(t *testing.T) {
	for key, want := range map[string]bool{
		"{product:42}":      true,
		"user:{5}:profile":  true,
		"{user}:5":          true,
		"product:42":        false,
		"{}product:42":      false, // an empty tag: the whole key is hashed
		"product:{42":       false,
		"a}b{c}":            true,
		"{}{x}":             false, // only the first '{' counts
		"category:{{1}}:xs": true,  // tag "{1"
	} {
		if got := HasHashTag(key); got != want {
			t.Errorf("HasHashTag(%q) = %v, want %v", key, got, want)
		}
	}
}
