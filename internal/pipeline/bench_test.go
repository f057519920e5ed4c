package pipeline

import (
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/walbust/walbust/internal/pgoutputtest"
	"github.com/walbust/walbust/mapping"
	"github.com/walbust/walbust/replication"
)

const benchDeps = `version: 1
tables:
  public.products:
    keys: ["product:{id}", "category:{category_id}:products", "product-by-sku:{sku}"]
`

// BenchmarkDecodeAndMap measures the per-change cost of turning pgoutput
// UPDATE messages into deduplicated invalidations: the CPU walbust spends
// per row before Redis.
func BenchmarkDecodeAndMap(b *testing.B) {
	reg, err := mapping.Parse("bench.yaml", []byte(benchDeps))
	if err != nil {
		b.Fatal(err)
	}
	msgs := benchMessages()
	p := New(Options{Registry: reg})
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		dec := replication.NewSinkDecoder(p.Begin)
		var tx *committed
		for _, m := range msgs {
			if tx, _, err = dec.Decode(m); err != nil {
				b.Fatal(err)
			}
		}
		if n := tx.Sink.plan.Len(); n != rows*2+2 {
			b.Fatalf("%d invalidations", n)
		}
		p.release(tx)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*rows), "ns/change")
}

// BenchmarkParsePglogrepl is the reference for BenchmarkDecodeAndMap: the
// same messages through pglogrepl.ParseV2 alone, no mapping, as walbust
// decoded them before row changes were decoded in place.
func BenchmarkParsePglogrepl(b *testing.B) {
	msgs := benchMessages()
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		for _, m := range msgs {
			if _, err := pglogrepl.ParseV2(m, false); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*rows), "ns/change")
}

const rows = 1000

// benchMessages is a transaction of rows UPDATEs of a 5-column table with
// REPLICA IDENTITY FULL, each moving a product between categories.
func benchMessages() [][]byte {
	cols := []pgoutputtest.Column{{Name: "id", Key: true}, {Name: "category_id"}, {Name: "sku"}, {Name: "name"}, {Name: "price_cents"}}
	msgs := [][]byte{pgoutputtest.Relation(1, "public", "products", 'f', cols), pgoutputtest.Begin(1, time.Now(), 7)}
	for i := range rows {
		id := []byte(strconv.Itoa(i))
		old := []pgoutputtest.Value{id, []byte("3"), []byte("sku-" + string(id)), []byte("Widget"), []byte("1000")}
		new := []pgoutputtest.Value{id, []byte("4"), []byte("sku-" + string(id)), []byte("Widget"), []byte("1100")}
		msgs = append(msgs, pgoutputtest.Update(1, 'O', old, new))
	}
	return append(msgs, pgoutputtest.Commit(2, 3, time.Now()))
}
