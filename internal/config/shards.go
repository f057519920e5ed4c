package config

import (
	"fmt"
	"path/filepath"
	"slices"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/walbust/walbust/internal/yamlnode"
)

// Shard is one walbust instance's share of deps.yaml's tables. Each shard
// streams from a slot and publication of its own, so shards decode and
// apply in parallel; commit order holds only within a shard.
type Shard struct {
	Name   string
	Tables []string // schema-qualified, as in deps.yaml
	// Overrides; empty means derived from the unsharded settings:
	Slot        string // postgres.slot + "_" + Name
	Publication string // postgres.publication + "_" + Name
	Checkpoint  string // checkpoint.path + "." + Name
	Listen      string // listen
	// where is "file:line:column" of each table in walbust.yaml.
	where map[string]string
}

var shardFields = []string{"tables", "slot", "publication", "checkpoint", "listen"}

// readShards reads the shards mapping; dir resolves relative checkpoints.
func readShards(doc *yamlnode.Doc, f yamlnode.Field, dir string) []Shard {
	var shards []Shard
	owner := map[string]string{} // table -> shard
	fields := doc.Mapping(f.Value, f.Path)
	if f.Value.Kind == yaml.MappingNode && len(f.Value.Content) == 0 {
		doc.Errorf(f.Value, f.Path, "no shards: name at least one, or remove shards")
		return nil
	}
	for _, sf := range fields {
		s := Shard{Name: sf.Key.Value, where: map[string]string{}}
		if !validIdentifier(s.Name) || len(s.Name) > 40 {
			doc.Errorf(sf.Key, sf.Path, "shard name %q: use up to 40 lower-case letters, digits and underscores (it becomes part of slot names)", s.Name)
		}
		sawTables := false
		for _, g := range doc.Mapping(sf.Value, sf.Path, shardFields...) {
			if g.Key.Value == "tables" {
				sawTables = true
				names, nodes := doc.Strings(g)
				if g.Value.Kind == yaml.SequenceNode && len(g.Value.Content) == 0 {
					doc.Errorf(g.Value, g.Path, "empty list: a shard needs at least one table")
				}
				for i, t := range names {
					schema, rel, ok := strings.Cut(t, ".")
					switch {
					case !ok || schema == "" || rel == "":
						doc.Errorf(nodes[i], fmt.Sprintf("%s[%d]", g.Path, i), "table name %q must be schema-qualified, as in deps.yaml (e.g. public.%s)", t, t)
						continue
					case owner[t] != "":
						doc.Errorf(nodes[i], fmt.Sprintf("%s[%d]", g.Path, i), "table %s is already in shard %s: a table belongs to exactly one shard", t, owner[t])
						continue
					}
					owner[t] = s.Name
					s.Tables = append(s.Tables, t)
					s.where[t] = fmt.Sprintf("%s:%d:%d", doc.File, nodes[i].Line, nodes[i].Column)
				}
				continue
			}
			v, ok := doc.String(g)
			if !ok {
				continue
			}
			switch g.Key.Value {
			case "slot":
				s.Slot = v
			case "publication":
				s.Publication = v
			case "checkpoint":
				if v != "" && !filepath.IsAbs(v) {
					v = filepath.Join(dir, v)
				}
				s.Checkpoint = v
			case "listen":
				s.Listen = v
			}
		}
		if !sawTables {
			doc.Errorf(sf.Key, sf.Path+".tables", "missing: list the deps.yaml tables this shard serves")
		}
		shards = append(shards, s)
	}
	return shards
}

// ShardNames lists the shards in walbust.yaml's order.
func (c *Config) ShardNames() []string {
	names := make([]string, len(c.Shards))
	for i, s := range c.Shards {
		names[i] = s.Name
	}
	return names
}

func (c *Config) shard(name string) (*Shard, error) {
	for i := range c.Shards {
		if c.Shards[i].Name == name {
			return &c.Shards[i], nil
		}
	}
	if len(c.Shards) == 0 {
		return nil, fmt.Errorf("shard %q: walbust.yaml defines no shards", name)
	}
	return nil, fmt.Errorf("shard %q is not defined (shards: %s)", name, strings.Join(c.ShardNames(), ", "))
}

// ForShard returns the configuration of one shard: its slot, publication,
// checkpoint, listen address and tables in place of the unsharded ones.
func (c *Config) ForShard(name string) (*Config, error) {
	if c.Tables != nil {
		return nil, fmt.Errorf("shard %q: configuration is already that of shard %s", name, c.Shard)
	}
	s, err := c.shard(name)
	if err != nil {
		return nil, err
	}
	out := *c
	out.Shard = name
	out.Postgres.Slot = cmpOr(s.Slot, c.Postgres.Slot+"_"+name)
	out.Postgres.Publication = cmpOr(s.Publication, c.Postgres.Publication+"_"+name)
	out.Checkpoint.Path = cmpOr(s.Checkpoint, c.Checkpoint.Path+"."+name)
	out.Listen = cmpOr(s.Listen, c.Listen)
	out.Tables = slices.Clone(s.Tables)
	return &out, nil
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// validateShards checks what depends on settings outside the shards
// section: the selected shard exists and every derived name is valid and
// distinct.
func (c *Config) validateShards() []error {
	var errs []error
	if c.Shard != "" {
		if _, err := c.shard(c.Shard); err != nil {
			errs = append(errs, err)
		}
	}
	slots := map[string]string{c.Postgres.Slot: "the unsharded configuration"}
	pubs := map[string]string{c.Postgres.Publication: "the unsharded configuration"}
	for _, s := range c.Shards {
		slot := cmpOr(s.Slot, c.Postgres.Slot+"_"+s.Name)
		pub := cmpOr(s.Publication, c.Postgres.Publication+"_"+s.Name)
		if !validIdentifier(slot) {
			errs = append(errs, fmt.Errorf("shard %s: slot %q: use at most 63 lower-case letters, digits and underscores", s.Name, slot))
		}
		if !validIdentifier(pub) {
			errs = append(errs, fmt.Errorf("shard %s: publication %q: use at most 63 lower-case letters, digits and underscores", s.Name, pub))
		}
		if other, dup := slots[slot]; dup {
			errs = append(errs, fmt.Errorf("shard %s: slot %q is also the slot of %s", s.Name, slot, other))
		}
		if other, dup := pubs[pub]; dup {
			errs = append(errs, fmt.Errorf("shard %s: publication %q is also the publication of %s", s.Name, pub, other))
		}
		slots[slot], pubs[pub] = "shard "+s.Name, "shard "+s.Name
	}
	return errs
}

// CheckShards checks the shards against the registry's tables: every table
// of deps.yaml is in a shard (or its changes would reach no walbust), and
// every table of a shard is in deps.yaml.
func (c *Config) CheckShards(registryTables []string) error {
	if len(c.Shards) == 0 {
		return nil
	}
	inRegistry := map[string]bool{}
	for _, t := range registryTables {
		inRegistry[t] = true
	}
	covered := map[string]bool{}
	var problems []string
	for _, s := range c.Shards {
		for _, t := range s.Tables {
			covered[t] = true
			if !inRegistry[t] {
				problems = append(problems, fmt.Sprintf("%s: shards.%s: table %s is not in deps.yaml", s.where[t], s.Name, t))
			}
		}
	}
	for _, t := range registryTables {
		if !covered[t] {
			problems = append(problems, fmt.Sprintf("shards: table %s of deps.yaml is in no shard, so no walbust would invalidate its keys: add it to one", t))
		}
	}
	if len(problems) > 0 {
		return fmt.Errorf("%s", strings.Join(problems, "\n"))
	}
	return nil
}
