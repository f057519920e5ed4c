-- refresh.lua: writes a refreshed key's value and its LSN key together,
-- only if this change is newer than what the LSN key records, so replays,
-- retries and reordered batches never overwrite a newer value with an
-- older one. The value key holds exactly the value (a reader's plain GET
-- sees what it would have cached itself); the LSN key holds the commit
-- LSN as pg_lsn text ("16/B374D848"), followed by " stale <lsn>" while the
-- value is stale: a later change's value could not be built, so the value
-- is older than that change. LSNs are compared as two 32-bit halves, which
-- Lua's doubles hold exactly; an LSN key that holds no LSN counts as 0/0.
--   KEYS[1] = key, KEYS[2] = LSN key
--   ARGV[1] = 'set' | 'del' | 'stale'
--   ARGV[2] = this change's commit LSN, pg_lsn text
--   ARGV[3] = TTL in ms (of the value, or negative marker, and LSN key)
--   ARGV[4] = set: the value; del: the negative marker (absent: delete)
--   returns 1 if written, 0 if the key already held this LSN or a newer
--   one (or, for stale, if nothing is cached), 2 if flagged stale

local function parse(s)
  if type(s) ~= 'string' then return nil end
  local hi, lo = string.match(s, '^(%x+)/(%x+)')
  if not hi or #hi > 8 or #lo > 8 then return nil end
  return tonumber(hi, 16), tonumber(lo, 16)
end

local nh, nl = parse(ARGV[2])
if not nh then
  return redis.error_reply('ERR refresh.lua: ARGV[2] is not an LSN')
end
local cur = redis.pcall('GET', KEYS[2])
local ch, cl = parse(cur)
if ch and (ch > nh or (ch == nh and cl >= nl)) then
  return 0
end
local op = ARGV[1]
if op == 'set' then
  redis.call('SET', KEYS[1], ARGV[4], 'PX', ARGV[3])
  redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
  return 1
elseif op == 'del' then
  if ARGV[4] then
    redis.call('SET', KEYS[1], ARGV[4], 'PX', ARGV[3])
  else
    redis.call('DEL', KEYS[1])
  end
  redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
  return 1
elseif op == 'stale' then
  -- The value stays, with its TTL: staleness is bounded by it.
  local pttl = redis.call('PTTL', KEYS[1])
  if pttl == -2 then
    return 0
  end
  local base = '0/0'
  if ch then
    base = string.match(cur, '^(%x+/%x+)')
    local sh, sl = parse(string.match(cur, ' stale (%x+/%x+)$'))
    if sh and (sh > nh or (sh == nh and sl >= nl)) then
      return 2
    end
  end
  local mark = base .. ' stale ' .. ARGV[2]
  if pttl > 0 then
    redis.call('SET', KEYS[2], mark, 'PX', pttl)
  else
    redis.call('SET', KEYS[2], mark)
  end
  return 2
end
return redis.error_reply('ERR refresh.lua: unknown operation ' .. tostring(op))
