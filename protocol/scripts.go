package protocol

// The Lua scripts of the protocol, to be run with EVAL/EVALSHA on one key
// each (so they work on Redis Cluster too). Readers in other languages use
// these sources verbatim; the Go side loads them with redis.NewScript.
//
// Each script treats a key holding another type than string as follows:
// FenceScript replaces it, LeaseScript fails with a WRONGTYPE error,
// CASScript fails the comparison (returns 0).

// luaMark returns the LSN of a well-formed tombstone or lease with the
// given prefix, or nil.
const luaMark = `
local function mark(s, prefix)
  if string.sub(s, 1, #prefix) ~= prefix then return nil end
  local lsn, tok = string.match(string.sub(s, #prefix + 1), '^(%d+):([0-9a-f]+)$')
  if not lsn or #lsn > 20 or (#lsn > 1 and string.sub(lsn, 1, 1) == '0') or #tok < 16 or #tok > 64 then
    return nil
  end
  return lsn
end
`

// FenceScript writes a fresh tombstone into KEYS[1], whatever the key
// held, with a TTL of ARGV[3] milliseconds:
//
//	KEYS[1] = key, ARGV[1] = commit LSN (decimal), ARGV[2] = token, ARGV[3] = TTL in ms
//	returns 1
//
// The tombstone's LSN is the larger of ARGV[1] and the LSN of the
// tombstone or lease the key held, so a replayed or reordered fence never
// lowers the LSN a replica-aware reader waits for; the token is always the
// new one, so every fill that observed the key before fails.
const FenceScript = luaMark + `
local lsn = ARGV[1]
if redis.call('TYPE', KEYS[1]).ok == 'string' then
  local cur = redis.call('GET', KEYS[1])
  local old = mark(cur, 'wbfence:1:') or mark(cur, 'wblease:1:')
  if old and (#old > #lsn or (#old == #lsn and old > lsn)) then lsn = old end
end
redis.call('SET', KEYS[1], 'wbfence:1:' .. lsn .. ':' .. ARGV[2], 'PX', ARGV[3])
return 1
`

// LeaseScript is a reader's observation of a key it missed on, made
// atomic: a tombstone, an absent key or a foreign string becomes a lease
// owned by the caller; a value or another reader's lease is returned as is.
//
//	KEYS[1] = key, ARGV[1] = the reader's token, ARGV[2] = TTL in ms of a lease over an absent key
//	returns {1, lease, ttl_ms}   acquired: the key now holds lease
//	        {0, content, pttl}   not acquired: the key holds a value or another lease
//
// A lease over a tombstone keeps the tombstone's LSN and its remaining TTL,
// so a lease never outlives the fence it replaced. A lease over an absent
// key has LSN 0 and the TTL ARGV[2].
const LeaseScript = luaMark + `
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
`

// CASScript is the conditional fill: it sets KEYS[1] to ARGV[2] only if
// the key still holds exactly ARGV[1], the content the caller observed (its
// lease, another reader's lease, or a value being revalidated). Because
// every stored form carries a unique token, equality means nothing
// happened to the key since the observation: no fence, no re-fence, no
// expiry, no other fill.
//
//	KEYS[1] = key, ARGV[1] = expected content, ARGV[2] = new content, ARGV[3] = TTL in ms, or 0 to keep the key's TTL
//	returns 1 if set, 0 if the key had changed
const CASScript = `
if redis.call('TYPE', KEYS[1]).ok ~= 'string' or redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
if ARGV[3] == '0' then
  redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
else
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
end
return 1
`
