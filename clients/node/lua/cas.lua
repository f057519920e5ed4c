-- cas.lua: the conditional fill. Sets KEYS[1] to ARGV[2] only if the key
-- still holds exactly ARGV[1], the content the caller observed.
--   KEYS[1] = key
--   ARGV[1] = expected content, ARGV[2] = new content,
--   ARGV[3] = TTL in ms, or 0 to keep the key's TTL
--   returns 1 if set, 0 if the key had changed (or is not a string)

if redis.call('TYPE', KEYS[1]).ok ~= 'string' or redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
if ARGV[3] == '0' then
  redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
else
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
end
return 1
