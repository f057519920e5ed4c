// Package checkpoint stores the LSN up to which every transaction's
// invalidations have been acknowledged by Redis, and whose position it is
// (see Identity). It is written atomically (temp file, fsync, rename, fsync
// of the directory) so a crash leaves either the old or the new position,
// never a torn one.
package checkpoint

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"

	"github.com/walbust/walbust/replication/wal"
)

// File is a checkpoint kept in one file.
type File struct {
	path string

	// mu serialises saves: the pipeline saves applied positions while the
	// streamer saves idle ones.
	mu       sync.Mutex
	identity *Identity // written with every save once bound
}

// Open returns the checkpoint at path, creating its directory if needed.
func Open(path string) (*File, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, fmt.Errorf("checkpoint directory: %w", err)
	}
	return &File{path: path}, nil
}

// Path is the checkpoint file's path.
func (f *File) Path() string { return f.path }

// Bind makes every later Save record id with the position.
func (f *File) Bind(id Identity) {
	f.mu.Lock()
	f.identity = &id
	f.mu.Unlock()
}

// Load returns the stored LSN, or 0 when there is no checkpoint yet.
func (f *File) Load() (wal.LSN, error) {
	c, _, err := f.Read()
	return c.LSN, err
}

// Read returns the whole checkpoint; found is false when there is none yet.
func (f *File) Read() (c Checkpoint, found bool, err error) {
	data, err := os.ReadFile(f.path)
	if errors.Is(err, fs.ErrNotExist) {
		return c, false, nil
	}
	if err != nil {
		return c, false, fmt.Errorf("read checkpoint: %w", err)
	}
	c, err = decode(string(data))
	if err != nil {
		return Checkpoint{}, true, fmt.Errorf("checkpoint %s is corrupt (%q): %w; delete it to resume from the slot's position", f.path, data, err)
	}
	return c, true, nil
}

// Save durably stores lsn, with the bound identity if there is one.
func (f *File) Save(lsn wal.LSN) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.write(Checkpoint{LSN: lsn, Identity: f.identity})
}

func (f *File) write(c Checkpoint) error {
	dir := filepath.Dir(f.path)
	tmp, err := os.CreateTemp(dir, filepath.Base(f.path)+".*.tmp")
	if err != nil {
		return fmt.Errorf("save checkpoint: %w", err)
	}
	defer os.Remove(tmp.Name()) // no-op after a successful rename
	if _, err := tmp.WriteString(c.encode()); err != nil {
		tmp.Close()
		return fmt.Errorf("save checkpoint: write: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("save checkpoint: fsync: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("save checkpoint: close: %w", err)
	}
	if err := os.Rename(tmp.Name(), f.path); err != nil {
		return fmt.Errorf("save checkpoint: rename: %w", err)
	}
	// The rename is durable only once the directory entry is.
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("save checkpoint: open dir: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("save checkpoint: fsync dir: %w", err)
	}
	return nil
}
