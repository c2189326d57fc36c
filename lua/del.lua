#!lua
--[[
  del.lua - CTX.DEL for servers without the module (docs/PROTOCOL.md, "Lua engine").

  Shebang (Redis 7.0+, script flags): write deny-oom, like CTX.DEL: refused under maxmemory
  before it runs (a script without flags could DEL under OOM).

  KEYS[1]  the context key
  ARGV[1]  expected_version: decimal integer 0 .. 9007199254740990 (2^53 - 2; Lua numbers are
           doubles, the module accepts up to 2^63 - 2)
  ARGV[2]  the write id (ID), 1 to 64 bytes; absent: none. Only checked: a delete leaves no
           window to replay from.

  Replies:
    1         the stored version equalled expected_version: the key was deleted (DEL propagated)
    nil       conflict: the key does not exist
    [version, raw, schema, updated_ms, updated_by]   conflict: the current state; with an ID
              also [oldest_known, changed] (changed empty), as CTX.CAS
  Errors:
    ERR        expected_version is not an integer in range; write id not 1 to 64 bytes
    WRONGTYPE  the key exists and is not a context (v2 string or v1 hash)
]]

local sub = string.sub
local MAX_EXPECTED = 9007199254740990

local function strict_int(s)
  -- A decimal integer as Redis' string2ll reads it (no '+', no leading zeros), or nil.
  if not s or #s == 0 or #s > 20 then return nil end
  if s == '0' then return 0 end
  if not string.find(s, '^%-?[1-9]%d*$') then return nil end
  local n = tonumber(s)
  if n >= 9223372036854775807 or n < -9223372036854775808 then return nil end
  return n
end

local function wrongtype()
  return redis.error_reply('WRONGTYPE Operation against a key that is not a ctxlink context')
end

local expected = strict_int(ARGV[1])
if not expected or expected < 0 or expected > MAX_EXPECTED then
  return redis.error_reply('ERR expected_version must be an integer from 0 to '
    .. string.format('%.0f', MAX_EXPECTED))
end
local wid = ARGV[2]
if wid and (#wid < 1 or #wid > 64) then
  return redis.error_reply('ERR write id must be 1 to 64 bytes')
end

local key = KEYS[1]
local got = redis.pcall('GET', key)
if got == false then return false end
local state, oldest
if type(got) == 'string' then
  local len = #got
  if len < 24 or sub(got, 1, 4) ~= 'CTX\2' then return wrongtype() end
  local v, ms, n, sl, bl = struct.unpack('<I8I8BBI2', got, 5)
  local at = 25 + 12 * n
  local hl = at + sl + bl - 1
  -- n <= v and v < 2^63 as the module (a hand-made window longer than the history)
  if n > 16 or sl < 1 or sl > 128 or hl > len or v < 1 or n > v or v >= 2 ^ 63 then
    return wrongtype()
  end
  state = { v, sub(got, hl + 1), sub(got, at, at + sl - 1), ms, sub(got, at + sl, hl) }
  oldest = v - n + 1
else
  local t = redis.call('TYPE', key)
  if type(t) == 'table' then t = t.ok end
  if t ~= 'hash' then return wrongtype() end
  local h = redis.call('HMGET', key, 'version', 'raw', 'schema', 'updated_ms', 'updated_by')
  local v = strict_int(h[1] or nil)
  if not v or v < 1 then return wrongtype() end
  state = { v, h[2] or '', h[3] or '', strict_int(h[4] or nil) or 0, h[5] or '' }
  oldest = v + 1
end
if state[1] ~= expected then
  if wid then -- as CTX.CAS: a command with ID gets oldest_known and an empty `changed`
    state[6], state[7] = oldest, {}
  end
  return state
end
redis.call('DEL', key)
return 1
