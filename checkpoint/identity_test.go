package checkpoint

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/walbust/walbust/replication/wal"
)

func TestIdentityRoundTrip(t *testing.T) {
	f, err := Open(filepath.Join(t.TempDir(), "checkpoint"))
	if err != nil {
		t.Fatal(err)
	}
	id := Identity{SystemID: "7301234567890123456", Database: "app", Slot: "walbust"}
	f.Bind(id)
	if err := f.Save(0x16B3748); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(f.Path())
	if first, _, _ := strings.Cut(string(data), "\n"); first != "0/16B3748" {
		t.Errorf("first line %q, want the bare LSN", first)
	}
	c, found, err := f.Read()
	if err != nil || !found {
		t.Fatalf("Read = %v, %v", found, err)
	}
	if c.LSN != 0x16B3748 || c.Identity == nil || *c.Identity != id {
		t.Fatalf("Read = %s %+v, want 0/16B3748 %+v", c.LSN, c.Identity, id)
	}
	if lsn, err := f.Load(); err != nil || lsn != 0x16B3748 {
		t.Fatalf("Load = %s, %v", lsn, err)
	}
}

// A file written before identities existed holds only the LSN.
func TestBareLSNFileHasNoIdentity(t *testing.T) {
	path := filepath.Join(t.TempDir(), "checkpoint")
	if err := os.WriteFile(path, []byte("0/16B3748\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	f, _ := Open(path)
	c, found, err := f.Read()
	if err != nil || !found || c.LSN != 0x16B3748 || c.Identity != nil {
		t.Fatalf("Read = %s %+v %v %v, want 0/16B3748 without identity", c.LSN, c.Identity, found, err)
	}
}

func TestHugeLSNRoundTrips(t *testing.T) {
	f, _ := Open(filepath.Join(t.TempDir(), "checkpoint"))
	f.Bind(Identity{SystemID: "1", Database: "d", Slot: "s"})
	want := wal.LSN(0xFFFFFFFF_FFFFFF00)
	if err := f.Save(want); err != nil {
		t.Fatal(err)
	}
	if got, err := f.Load(); err != nil || got != want {
		t.Fatalf("Load = %s, %v; want %s", got, err, want)
	}
}

func TestCorruptIdentityIsAnError(t *testing.T) {
	for name, data := range map[string]string{
		"empty":           "",
		"no lsn":          "system_identifier=1\ndatabase=d\nslot=s\n",
		"lsn and junk":    "0/16B3748 junk\n",
		"lsn too long":    "0/123456789\n",
		"not key=value":   "0/1\ngarbage\n",
		"missing slot":    "0/1\nsystem_identifier=1\ndatabase=d\n",
		"unknown key":     "0/1\nsystem_identifier=1\ndatabase=d\nslot=s\ncolour=red\n",
		"duplicate":       "0/1\nsystem_identifier=1\ndatabase=d\nslot=s\nslot=t\n",
		"empty system id": "0/1\nsystem_identifier=\ndatabase=d\nslot=s\n",
	} {
		path := filepath.Join(t.TempDir(), "checkpoint")
		if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
		f, _ := Open(path)
		_, found, err := f.Read()
		if err == nil || !found {
			t.Errorf("%s: Read of %q = found %v, err %v; want a corrupt-file error", name, data, found, err)
		} else if !strings.Contains(err.Error(), "corrupt") || !strings.Contains(err.Error(), path) {
			t.Errorf("%s: error %q does not say the file %s is corrupt", name, err, path)
		}
	}
}
