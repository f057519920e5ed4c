package replication_test

import (
	"encoding/binary"
	"runtime"
	"testing"

	"github.com/walbust/walbust/internal/pgoutputtest"
	"github.com/walbust/walbust/replication"
	"github.com/walbust/walbust/replication/wal"
)

// checkTransaction checks what any decoded transaction must satisfy.
func checkTransaction(t *testing.T, tx *replication.Committed[replication.Sink]) {
	t.Helper()
	for i, c := range tx.Changes {
		if c.Relation == nil {
			t.Fatalf("change %d has no relation", i)
		}
		n := len(c.Relation.Columns)
		switch c.Op {
		case wal.Insert:
			if len(c.New) != n || c.Old != nil {
				t.Errorf("insert %d: %d new values, old %v; relation has %d columns", i, len(c.New), c.Old, n)
			}
		case wal.Update:
			if len(c.New) != n || c.Old != nil && len(c.Old) != n {
				t.Errorf("update %d: %d new, %d old values; relation has %d columns", i, len(c.New), len(c.Old), n)
			}
		case wal.Delete:
			if c.New != nil || c.Old != nil && len(c.Old) != n {
				t.Errorf("delete %d: %d new, %d old values; relation has %d columns", i, len(c.New), len(c.Old), n)
			}
		case wal.Truncate:
			if c.New != nil || c.Old != nil {
				t.Errorf("truncate %d carries rows", i)
			}
		default:
			t.Errorf("change %d has op %v", i, c.Op)
		}
		for _, v := range append(append([]wal.Value(nil), c.Old...), c.New...) {
			if v.Kind > wal.Text || v.Kind != wal.Text && v.Data != nil {
				t.Errorf("change %d: value %+v", i, v)
			}
		}
	}
}

// FuzzDecoder decodes one message on a decoder that knows two relations and
// is inside a transaction, so row changes reach the tuple decoder.
func FuzzDecoder(f *testing.F) {
	for _, m := range validMessages() {
		f.Add(m)
	}
	f.Add(streamStart(5, true))
	f.Add(streamCommit(5, 1, 2))
	f.Add(streamAbort(5, 5))
	f.Add(streamStop())
	f.Add([]byte{'O', 0, 0, 0, 0, 0, 0, 0, 1, 'o', 0})
	f.Add([]byte{'Y', 0, 0, 0, 23, 'p', 'g', 0, 'i', 'n', 't', 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		var tx *replication.Committed[replication.Sink]
		var rel *wal.Relation
		var err error
		d := primedDecoder(t)
		if n := allocated(func() { tx, rel, err = d.Decode(data) }); n > maxAlloc(len(data)) {
			t.Fatalf("a %d-byte message allocated %d bytes", len(data), n)
		}
		if err != nil {
			if tx != nil || rel != nil {
				t.Fatalf("result with error %v", err)
			}
			return
		}
		if tx != nil {
			checkTransaction(t, tx)
		}
		if rel != nil && len(data) > 0 && data[0] != 'R' {
			t.Errorf("relation from a %q message", data[0])
		}
	})
}

// FuzzDecoderStream decodes a sequence of messages, each prefixed with its
// 16-bit length, on one decoder.
func FuzzDecoderStream(f *testing.F) {
	f.Add(frame(validMessages()...))
	f.Add(frame(usersRelation('d'), begin(), pgoutputtest.Insert(relUsers, pv("1"), nil, nil), commit(),
		begin(), pgoutputtest.Delete(relUsers, 'K', []pv{pv("1"), nil, nil}), commit()))
	f.Add(frame(streamStart(500, true), withXid(usersRelation('d'), 500), withXid(pgoutputtest.Insert(relUsers, pv("1"), nil, nil), 500),
		streamStop(), begin(), pgoutputtest.Truncate(relUsers), commit(), streamStart(500, false),
		withXid(pgoutputtest.Update(relUsers, 'O', []pv{pv("1"), pv("a"), pv("b")}, []pv{pv("1"), pv("c"), pgoutputtest.Unchanged}), 501),
		streamStop(), streamAbort(500, 501), streamCommit(500, 9, 10)))
	f.Fuzz(func(t *testing.T, data []byte) {
		d := replication.NewDecoder()
		for len(data) >= 2 {
			n := int(binary.BigEndian.Uint16(data))
			data = data[2:]
			if n > len(data) {
				n = len(data)
			}
			msg := data[:n:n]
			data = data[n:]
			var tx *replication.Committed[replication.Sink]
			var err error
			if n := allocated(func() { tx, _, err = d.Decode(msg) }); n > maxAlloc(len(msg)) {
				t.Fatalf("a %d-byte message allocated %d bytes", len(msg), n)
			}
			if err != nil && tx != nil {
				t.Fatalf("transaction with error %v", err)
			}
			if tx != nil {
				checkTransaction(t, tx)
			}
		}
	})
}

func frame(msgs ...[]byte) []byte {
	var b []byte
	for _, m := range msgs {
		b = binary.BigEndian.AppendUint16(b, uint16(len(m)))
		b = append(b, m...)
	}
	return b
}

// allocated returns the bytes allocated while running f. A corrupt message
// must not make the decoder allocate what its length fields claim
// (TestDecodeHugeLengthsDoNotAllocate); maxAlloc bounds what a message of n
// bytes may legitimately cost, generously: the count includes whatever the
// fuzzing machinery allocates meanwhile, and a claimed length is usually
// far larger.
func allocated(f func()) uint64 {
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

func maxAlloc(n int) uint64 { return 64<<20 + 256*uint64(n) }
