-- raise.lua: raises a position key (walbust:applied:{SLOT},
-- walbust:settled:{SLOT}) to ARGV[1], never lowering it, so a replay after
-- a restart, a zombie instance's last batch or an idle save racing a batch
-- cannot move it backwards. Positions are pg_lsn text ("16/B374D848"),
-- compared as two 32-bit halves, which Lua's doubles hold exactly. A key
-- that holds no LSN (or another type) is overwritten.
--   KEYS[1] = position key
--   ARGV[1] = new position, pg_lsn text
--   returns 1 if raised, 0 if the key already held ARGV[1] or more

local function parse(s)
  if type(s) ~= 'string' then return nil end
  local hi, lo = string.match(s, '^(%x+)/(%x+)$')
  if not hi or #hi > 8 or #lo > 8 then return nil end
  return tonumber(hi, 16), tonumber(lo, 16)
end

local nh, nl = parse(ARGV[1])
if not nh then
  return redis.error_reply('ERR raise.lua: ARGV[1] is not an LSN')
end
local cur = redis.pcall('GET', KEYS[1])
local ch, cl = parse(cur)
if ch and (ch > nh or (ch == nh and cl >= nl)) then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1])
return 1
