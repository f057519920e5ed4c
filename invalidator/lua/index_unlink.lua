-- index_unlink.lua: invalidates indexed families whose rules delete, in
-- one step: UNLINKs every member of the sets in KEYS (each family's index
-- and its draining set, what a failed pass left), then the sets. Atomic,
-- so there is nothing half done to resume; keys filled from now on go to
-- a fresh index. One call serves many families (one SUNION: each
-- redis.call costs microseconds); members are UNLINKed 1000 at a time
-- (Lua's unpack limit).
--   KEYS = index, draining, index, draining, ...
--   returns the number of distinct members
local doomed = redis.call('SUNION', unpack(KEYS))
local n = #doomed
for _, set in ipairs(KEYS) do
  doomed[#doomed + 1] = set
end
for i = 1, #doomed, 1000 do
  redis.call('UNLINK', unpack(doomed, i, math.min(i + 999, #doomed)))
end
return n
