package daemon

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/walbust/walbust/checkpoint"
	"github.com/walbust/walbust/internal/validate"
	"github.com/walbust/walbust/invalidator"
	"github.com/walbust/walbust/replication"
	"github.com/walbust/walbust/replication/wal"
)

var (
	here  = checkpoint.Identity{SystemID: "7300", Database: "app", Slot: "walbust"}
	other = checkpoint.Identity{SystemID: "9900", Database: "app", Slot: "walbust"}
)

func TestJudgeCheckpoint(t *testing.T) {
	for _, tc := range []struct {
		name  string
		c     checkpoint.Checkpoint
		found bool
		want  checkpointVerdict
	}{
		{"no file", checkpoint.Checkpoint{}, false, checkpointUsable},
		{"ours", checkpoint.Checkpoint{LSN: 100, Identity: &here}, true, checkpointUsable},
		{"no identity yet", checkpoint.Checkpoint{LSN: 100}, true, checkpointUsable},
		{"another deployment's", checkpoint.Checkpoint{LSN: 100, Identity: &other}, true, checkpointElsewhere},
		{"another deployment's, beyond the WAL too", checkpoint.Checkpoint{LSN: 5000, Identity: &other}, true, checkpointElsewhere},
		{"beyond this server's WAL", checkpoint.Checkpoint{LSN: 5000, Identity: &here}, true, checkpointBeyondWAL},
		{"beyond the WAL, no identity", checkpoint.Checkpoint{LSN: 5000}, true, checkpointBeyondWAL},
		{"at the WAL end", checkpoint.Checkpoint{LSN: 1000, Identity: &here}, true, checkpointUsable},
	} {
		if got := judgeCheckpoint(tc.c, tc.found, here, 1000); got != tc.want {
			t.Errorf("%s: judgeCheckpoint = %d, want %d", tc.name, got, tc.want)
		}
	}
}

func TestJudgeSlot(t *testing.T) {
	const walEnd = 1000
	ours := func(lsn wal.LSN) checkpoint.Checkpoint { return checkpoint.Checkpoint{LSN: lsn, Identity: &here} }
	for _, tc := range []struct {
		name          string
		c             checkpoint.Checkpoint
		found         bool
		slotConfirmed wal.LSN
		want          slotVerdict
	}{
		{"first start: no checkpoint", checkpoint.Checkpoint{}, false, 500, slotResumes},
		{"slot at the checkpoint", ours(500), true, 500, slotResumes},
		{"slot behind the checkpoint (confirmed later)", ours(500), true, 400, slotResumes},
		{"slot past the checkpoint: peer or re-created", ours(500), true, 600, slotAheadOfCheckpoint},
		{"slot beyond the WAL end", ours(500), true, walEnd + 1, slotBeyondWAL},
		{"slot beyond the WAL end, no checkpoint", checkpoint.Checkpoint{}, false, walEnd + 1, slotBeyondWAL},
		{"checkpoint without identity", checkpoint.Checkpoint{LSN: 500}, true, 600, slotRewriteIdentity},
		{"checkpoint without identity, slot behind", checkpoint.Checkpoint{LSN: 500}, true, 400, slotRewriteIdentity},
	} {
		if got := judgeSlot(tc.c, tc.found, tc.slotConfirmed, walEnd); got != tc.want {
			t.Errorf("%s: judgeSlot = %d, want %d", tc.name, got, tc.want)
		}
	}
}

func TestNeedsWatermarkOnReconnect(t *testing.T) {
	ours := checkpoint.Checkpoint{LSN: 500, Identity: &here}
	for _, tc := range []struct {
		name      string
		c         checkpoint.Checkpoint
		active    bool
		confirmed wal.LSN
		want      bool
	}{
		{"slot moved while disconnected", ours, false, 600, true},
		{"slot streamed by another instance now", ours, true, 600, false},
		{"slot at the checkpoint", ours, false, 500, false},
		{"checkpoint without identity", checkpoint.Checkpoint{LSN: 500}, false, 600, false},
	} {
		if got := needsWatermarkOnReconnect(tc.c, tc.active, tc.confirmed); got != tc.want {
			t.Errorf("%s: needsWatermarkOnReconnect = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestWatermarkVerdict(t *testing.T) {
	const key, walEnd = "walbust:applied:walbust", 1000
	bad := fmt.Errorf("%w: key holds \"x\"", invalidator.ErrBadWatermark)
	for _, tc := range []struct {
		name      string
		confirmed wal.LSN
		mark      wal.LSN
		found     bool
		err       error
		wantOK    bool
		wantErr   bool
		why       string
	}{
		{"a peer applied up to the slot", 600, 600, true, nil, true, false, ""},
		{"a peer applied past the slot", 600, 700, true, nil, true, false, ""},
		{"no watermark: slot re-created", 600, 0, false, nil, false, false, "is absent"},
		{"watermark behind the slot: advanced by hand", 600, 550, true, nil, false, false, "so no walbust applied the changes after it"},
		{"watermark another server's", 600, walEnd + 1, true, nil, false, false, "so it is another server's"},
		{"unreadable watermark", 600, 0, false, bad, false, false, "key holds"},
		{"redis does not answer: nothing decided", 600, 0, false, errors.New("connection refused"), false, true, ""},
	} {
		cov, err := watermarkVerdict(key, tc.confirmed, walEnd, tc.mark, tc.found, tc.err)
		if (err != nil) != tc.wantErr || cov.ok != tc.wantOK || !strings.Contains(cov.why, tc.why) {
			t.Errorf("%s: watermarkVerdict = %+v, %v; want ok=%v err=%v why containing %q", tc.name, cov, err, tc.wantOK, tc.wantErr, tc.why)
		}
		if cov.ok && cov.mark != tc.mark {
			t.Errorf("%s: mark = %s, want %s", tc.name, cov.mark, tc.mark)
		}
	}
}

func TestJudgeSlotAtStart(t *testing.T) {
	for _, tc := range []struct {
		name   string
		slot   *replication.SlotInfo
		stored wal.LSN
		want   startVerdict
	}{
		{"setup not run", nil, 0, startNeedsSetup},
		{"slot dropped after streaming", nil, 500, startSlotDropped},
		{"slot lost", &replication.SlotInfo{Name: "walbust", WALStatus: "lost"}, 0, startSlotLost},
		{"slot reserved", &replication.SlotInfo{Name: "walbust", WALStatus: "reserved"}, 0, startCheckPosition},
		{"slot unreserved: at risk, not lost", &replication.SlotInfo{Name: "walbust", WALStatus: "unreserved"}, 500, startCheckPosition},
	} {
		if got := judgeSlotAtStart(tc.slot, tc.stored); got != tc.want {
			t.Errorf("%s: judgeSlotAtStart = %d, want %d", tc.name, got, tc.want)
		}
	}
}

func TestJudgeSlotLoss(t *testing.T) {
	lost := fmt.Errorf("%w: slot %q has wal_status=lost", replication.ErrSlotLost, "walbust")
	noPub := fmt.Errorf("%w: %w: publication %q does not exist", replication.ErrSlotLost, replication.ErrPublicationMissing, "walbust")
	for _, tc := range []struct {
		policy string
		cause  error
		want   slotLossAction
	}{
		{"fail", lost, lossRefuse},
		{"", lost, lossRefuse},
		{"fail", noPub, lossRefusePublication},
		{"resync", lost, lossResync},
		{"resync", noPub, lossAwaitPublicationThenResync},
	} {
		if got := judgeSlotLoss(tc.policy, tc.cause); got != tc.want {
			t.Errorf("on_slot_loss %q, %v: judgeSlotLoss = %d, want %d", tc.policy, tc.cause, got, tc.want)
		}
	}
}

func TestJudgeSetup(t *testing.T) {
	stream := validate.ServerProblem{Blocks: validate.StepStream, Msg: "wal_sender_timeout is 0"}
	noReplication := validate.ServerProblem{Blocks: validate.StepSlot | validate.StepStream, RoleOnly: true, Msg: "role lacks REPLICATION"}
	walLevel := validate.ServerProblem{Blocks: validate.StepSlot | validate.StepStream, Msg: "wal_level is replica"}
	notOwner := validate.ServerProblem{Blocks: validate.StepPublication, RoleOnly: true, Msg: "role owns no table"}
	for _, tc := range []struct {
		name                 string
		problems             []validate.ServerProblem
		warnings, refused    int
		wantErr, wantSlotErr bool
	}{
		{"clean", nil, 0, 0, false, false},
		{"only run is blocked: a warning", []validate.ServerProblem{stream}, 1, 0, false, false},
		{"role lacks REPLICATION: publication only", []validate.ServerProblem{noReplication, stream}, 1, 0, false, true},
		{"server not ready: nothing", []validate.ServerProblem{walLevel}, 0, 1, true, false},
		{"role problems that block the publication too: nothing", []validate.ServerProblem{noReplication, notOwner}, 0, 2, true, false},
		{"blocking and role problems: nothing, all shown", []validate.ServerProblem{noReplication, walLevel, stream}, 1, 2, true, false},
	} {
		v := JudgeSetup(tc.problems)
		if len(v.Warnings) != tc.warnings || len(v.Refused) != tc.refused || (v.Err != nil) != tc.wantErr || (v.SlotErr != nil) != tc.wantSlotErr {
			t.Errorf("%s: JudgeSetup = %+v", tc.name, v)
		}
	}
}
