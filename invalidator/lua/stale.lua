-- stale.lua: moves the live value (of any type) to the stale key and sets
-- its TTL, atomically.
--   KEYS[1] = live key, KEYS[2] = stale key
--   ARGV[1] = TTL of the stale key in ms
--   returns 1 if moved, 0 if the live key was absent (already invalidated
--   or never cached)

if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
redis.call('RENAME', KEYS[1], KEYS[2])
redis.call('PEXPIRE', KEYS[2], ARGV[1])
return 1
