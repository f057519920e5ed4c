package replication

import (
	"errors"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
)

// A dropped publication is a slot loss (only a new slot recovers), marked
// so the daemon can say which; a dropped slot is not a dropped publication.
func TestClassifyMissingPublication(t *testing.T) {
	err := classify(&pgconn.PgError{Code: "42704", Message: `publication "walbust" does not exist`})
	if !errors.Is(err, ErrSlotLost) || !errors.Is(err, ErrPublicationMissing) || errors.Is(err, ErrFatal) {
		t.Errorf("missing publication classified as %v", err)
	}
	err = classify(&pgconn.PgError{Code: "42704", Message: `replication slot "walbust" does not exist`})
	if !errors.Is(err, ErrSlotLost) || errors.Is(err, ErrPublicationMissing) {
		t.Errorf("missing slot classified as %v", err)
	}
	err = classify(&pgconn.PgError{Code: "42704", Message: `type "x" does not exist`})
	if !errors.Is(err, ErrFatal) || errors.Is(err, ErrSlotLost) {
		t.Errorf("other undefined object classified as %v", err)
	}
}
