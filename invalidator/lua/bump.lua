-- bump.lua: raises a version key to ARGV[1], never lowering it. Versions
-- are compared as decimal strings (length first) to stay exact beyond 2^53.
--   KEYS[1] = version key
--   ARGV[1] = new version (decimal, no leading zeros)
--   returns 1 if raised, 0 if the key already held ARGV[1] or more

local cur = redis.call('GET', KEYS[1])
local new = ARGV[1]
if cur and (#cur > #new or (#cur == #new and cur >= new)) then
  return 0
end
redis.call('SET', KEYS[1], new)
return 1
