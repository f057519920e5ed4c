package config

// Debug is what helps diagnose walbust; all of it is off unless enabled.
type Debug struct {
	// Pprof serves /debug/pprof/ on listen. Off by default: profiles are
	// for a session of diagnosis, and listen may be reachable by more
	// than the operator.
	Pprof bool
}

func (c *Config) debugSettings() []setting {
	return []setting{
		{path: "debug.pprof", flag: "debug-pprof", env: "WALBUST_DEBUG_PPROF", boolean: &c.Debug.Pprof, usage: "serve Go profiles at /debug/pprof/ on listen (true or false)"},
	}
}
