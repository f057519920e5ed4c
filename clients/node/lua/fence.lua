-- fence.lua: walbust's fence. Writes a fresh tombstone into KEYS[1],
-- whatever the key held (another type included).
--   KEYS[1] = key
--   ARGV[1] = commit LSN (decimal), ARGV[2] = token, ARGV[3] = TTL in ms
--   returns 1
-- The tombstone's LSN is the larger of ARGV[1] and the LSN of the tombstone
-- or lease the key held, so a replayed fence never lowers it.
-- mark() is the same in lease.lua: each file is self-contained, to be sent
-- to Redis verbatim by any client.

local function mark(s, prefix)
  if string.sub(s, 1, #prefix) ~= prefix then return nil end
  local lsn, tok = string.match(string.sub(s, #prefix + 1), '^(%d+):([0-9a-f]+)$')
  if not lsn or #lsn > 20 or (#lsn > 1 and string.sub(lsn, 1, 1) == '0') or #tok < 16 or #tok > 64 then
    return nil
  end
  return lsn
end

local lsn = ARGV[1]
if redis.call('TYPE', KEYS[1]).ok == 'string' then
  local cur = redis.call('GET', KEYS[1])
  local old = mark(cur, 'wbfence:1:') or mark(cur, 'wblease:1:')
  if old and (#old > #lsn or (#old == #lsn and old > lsn)) then lsn = old end
end
redis.call('SET', KEYS[1], 'wbfence:1:' .. lsn .. ':' .. ARGV[2], 'PX', ARGV[3])
return 1
