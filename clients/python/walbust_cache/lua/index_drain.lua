-- index_drain.lua: walbust's first step in invalidating an indexed family.
-- Moves the index KEYS[1] into the draining set KEYS[2], adding to what a
-- failed pass left there, and returns the draining set's members; walbust
-- UNLINKs them, then deletes KEYS[2]. Keys filled from now on go to a
-- fresh index.
--   KEYS[1] = index, KEYS[2] = draining, ARGV[1] = the draining set's TTL in ms
--   returns the members of KEYS[2]

if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('SUNIONSTORE', KEYS[2], KEYS[2], KEYS[1])
  redis.call('DEL', KEYS[1])
  redis.call('PEXPIRE', KEYS[2], ARGV[1])
end
return redis.call('SMEMBERS', KEYS[2])
