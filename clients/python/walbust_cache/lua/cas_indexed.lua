-- cas_indexed.lua: the conditional fill of a key of an indexed family.
-- Sets KEYS[1] to ARGV[2] only if it still holds exactly ARGV[1], and adds
-- KEYS[1] to the family's index set KEYS[2], whose TTL it raises to at
-- least the key's.
--   KEYS[1] = key, KEYS[2] = index (walbust:index:{<family>})
--   ARGV[1] = expected content, ARGV[2] = new content,
--   ARGV[3] = TTL in ms, or 0 to keep the key's TTL,
--   ARGV[4] = the index's bound (most members it may hold)
--   returns 1 if set, 0 if the key had changed (or is not a string),
--           -1 if the index is full (nothing written)

if redis.call('TYPE', KEYS[1]).ok ~= 'string' or redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
if redis.call('SISMEMBER', KEYS[2], KEYS[1]) == 0 and redis.call('SCARD', KEYS[2]) >= tonumber(ARGV[4]) then
  return -1
end
if ARGV[3] == '0' then
  redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
else
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
end
local existed = redis.call('EXISTS', KEYS[2]) == 1
local ittl = redis.call('PTTL', KEYS[2])
redis.call('SADD', KEYS[2], KEYS[1])
local kttl = redis.call('PTTL', KEYS[1])
if kttl < 0 then
  redis.call('PERSIST', KEYS[2])
elseif not existed or (ittl >= 0 and ittl < kttl) then
  redis.call('PEXPIRE', KEYS[2], kttl)
end
return 1
