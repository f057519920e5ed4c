package daemon

import (
	"fmt"

	"github.com/walbust/walbust/internal/validate"
)

// SetupVerdict is what `walbust setup` may do, given the problems the
// Postgres preflight found: it must never stop half way for a reason it
// could have seen.
type SetupVerdict struct {
	Warnings []validate.ServerProblem // run's to face, not setup's
	Refused  []validate.ServerProblem // why setup changes nothing, when Err is set
	// Err: setup must do nothing. SlotErr: setup may create the
	// publications but not the slots, only because the role lacks
	// REPLICATION (a table owner running setup for a walbust role that
	// creates the slot itself).
	Err, SlotErr error
}

// JudgeSetup sorts the preflight's problems into what setup may do.
func JudgeSetup(problems []validate.ServerProblem) SetupVerdict {
	var v SetupVerdict
	var blocking, roleOnly []validate.ServerProblem
	publication := false
	for _, p := range problems {
		switch {
		case p.Blocks&(validate.StepPublication|validate.StepSlot) == 0:
			v.Warnings = append(v.Warnings, p)
			continue
		case p.RoleOnly:
			roleOnly = append(roleOnly, p)
		default:
			blocking = append(blocking, p)
		}
		publication = publication || p.Blocks&validate.StepPublication != 0
	}
	if len(blocking) > 0 || (len(roleOnly) > 0 && publication) {
		v.Refused = append(roleOnly, blocking...)
		v.Err = fmt.Errorf("setup changed nothing: fix the %d problem(s) above and run it again", len(blocking)+len(roleOnly))
		return v
	}
	if len(roleOnly) > 0 {
		v.SlotErr = fmt.Errorf("no replication slot created: %s; or run `walbust setup` as the walbust role, which finds the publication and creates the slot", roleOnly[0])
	}
	return v
}
