-- lease.lua: a reader's miss, made atomic. A tombstone, an absent key or a
-- foreign string becomes a lease owned by the caller; a value or another
-- reader's lease is returned as is.
--   KEYS[1] = key
--   ARGV[1] = the reader's token, ARGV[2] = TTL in ms of a lease over an absent key
--   returns {1, lease, ttl_ms}   acquired: the key now holds lease
--           {0, content, pttl}   not acquired: the key holds a value or another lease
--   a key of another type than string: a WRONGTYPE error
-- A lease over a tombstone keeps its LSN and remaining TTL; over an absent
-- or foreign key it has LSN 0 and TTL ARGV[2].
-- mark() is the same in fence.lua: each file is self-contained, to be sent
-- to Redis verbatim by any client.

local function mark(s, prefix)
  if string.sub(s, 1, #prefix) ~= prefix then return nil end
  local lsn, tok = string.match(string.sub(s, #prefix + 1), '^(%d+):([0-9a-f]+)$')
  if not lsn or #lsn > 20 or (#lsn > 1 and string.sub(lsn, 1, 1) == '0') or #tok < 16 or #tok > 64 then
    return nil
  end
  return lsn
end

local t = redis.call('TYPE', KEYS[1]).ok
local lsn, ttl = '0', tonumber(ARGV[2])
if t == 'string' then
  local cur = redis.call('GET', KEYS[1])
  local f = mark(cur, 'wbfence:1:')
  if f then
    lsn = f
    local p = redis.call('PTTL', KEYS[1])
    if p > 0 then ttl = p end
  elseif string.sub(cur, 1, 8) == 'wbval:1:' or mark(cur, 'wblease:1:') then
    return {0, cur, redis.call('PTTL', KEYS[1])}
  end
elseif t ~= 'none' then
  return redis.error_reply('WRONGTYPE key holds a ' .. t .. ', not a cache-aside string')
end
local lease = 'wblease:1:' .. lsn .. ':' .. ARGV[1]
redis.call('SET', KEYS[1], lease, 'PX', ttl)
return {1, lease, ttl}
