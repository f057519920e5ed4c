package main

import (
	"github.com/walbust/walbust/internal/config"
	"github.com/walbust/walbust/invalidator"
)

// redisOptions is how every command reaches Redis: one place, so run and
// validate connect alike (same mode, TLS files and credentials).
func redisOptions(r config.Redis) invalidator.Options {
	return invalidator.Options{Mode: r.Mode, URL: r.URL, SentinelMaster: r.SentinelMaster,
		CAFile: r.CAFile, CertFile: r.CertFile, KeyFile: r.KeyFile, WaitReplicas: r.WaitReplicas}
}
