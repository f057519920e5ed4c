package checkpoint

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/walbust/walbust/replication/wal"
)

func TestSaveLoadRoundTrip(t *testing.T) {
	f, err := Open(filepath.Join(t.TempDir(), "sub", "checkpoint"))
	if err != nil {
		t.Fatal(err)
	}
	lsn, err := f.Load()
	if err != nil || lsn != 0 {
		t.Fatalf("fresh checkpoint = %s, %v; want 0, nil", lsn, err)
	}
	for _, want := range []wal.LSN{0x16B3748, 0x1_0000_0000, 0x1_0000_0010} {
		if err := f.Save(want); err != nil {
			t.Fatal(err)
		}
		got, err := f.Load()
		if err != nil || got != want {
			t.Fatalf("Load = %s, %v; want %s", got, err, want)
		}
	}
	entries, _ := os.ReadDir(filepath.Dir(f.Path()))
	if len(entries) != 1 {
		t.Fatalf("temp files left behind: %v", entries)
	}
}

func TestCorruptCheckpointIsAnError(t *testing.T) {
	path := filepath.Join(t.TempDir(), "checkpoint")
	if err := os.WriteFile(path, []byte("not-an-lsn"), 0o600); err != nil {
		t.Fatal(err)
	}
	f, _ := Open(path)
	if _, err := f.Load(); err == nil {
		t.Fatal("Load of a corrupt checkpoint succeeded")
	}
}
