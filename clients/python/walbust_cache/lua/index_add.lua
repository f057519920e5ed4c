-- index_add.lua: adds a key to its family's index set (Redis Cluster,
-- where the key and the index are in different slots: run before the
-- fill, so a key is never cached outside its index).
--   KEYS[1] = index (walbust:index:{<family>})
--   ARGV[1] = key, ARGV[2] = the key's TTL in ms, or 0 for none,
--   ARGV[3] = the index's bound (most members it may hold)
--   returns 1 if the key is in the index, 0 if the index is full

if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 0 and redis.call('SCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  return 0
end
local existed = redis.call('EXISTS', KEYS[1]) == 1
local ittl = redis.call('PTTL', KEYS[1])
redis.call('SADD', KEYS[1], ARGV[1])
local kttl = tonumber(ARGV[2])
if kttl <= 0 then
  redis.call('PERSIST', KEYS[1])
elseif not existed or (ittl >= 0 and ittl < kttl) then
  redis.call('PEXPIRE', KEYS[1], kttl)
end
return 1
