package pipeline

import (
	"sync/atomic"

	"github.com/walbust/walbust/mapping"
)

// registrySwap carries a reloaded registry from the goroutine that checked
// it to the streaming goroutine, which alone maps rows.
type registrySwap struct {
	next    atomic.Pointer[mapping.Registry]
	current *mapping.Registry // streaming goroutine only; nil: opts.Registry
}

// SwapRegistry makes transactions that begin after this call be mapped with
// reg. A transaction already begun keeps the registry it began with, so each
// plan comes from one registry; plans mapped before the swap stay valid,
// since their lookups carry their own rules and the resolver only adds the
// querier, which does not change.
func (p *Pipeline) SwapRegistry(reg *mapping.Registry) { p.swap.next.Store(reg) }

// takeRegistry switches to a swapped-in registry; called at each
// transaction's begin (Begin). The Mapper is replaced whole, bindings and
// all, rather than changed under a transaction in flight.
func (p *Pipeline) takeRegistry() {
	reg := p.swap.next.Swap(nil)
	if reg == nil {
		return
	}
	m := mapping.NewMapper(reg, nil)
	m.MaxTxChanges = p.opts.MaxTxChanges
	m.BindOIDs(p.opts.TableOIDs)
	m.InheritOIDs(p.mapper)
	p.mapper, p.swap.current = m, reg
}

// registry is the registry the streaming goroutine maps with now.
func (p *Pipeline) registry() *mapping.Registry {
	if p.swap.current != nil {
		return p.swap.current
	}
	return p.opts.Registry
}
