#!lua
--[[
  del.lua - CTX.DEL for servers without the module (docs/PROTOCOL.md, "Lua engine").

  Shebang (Redis 7.0+, script flags): write deny-oom, like CTX.DEL: refused under maxmemory
  before it runs (a script without flags could DEL under OOM).

  KEYS[1]  the context key
  ARGV[1]  expected_version: decimal integer 0 .. 9007199254740990 (2^53 - 2; Lua numbers are
           doubles, the module accepts up to 2^63 - 2)

  Replies:
    1         the stored version equalled expected_version: the key was deleted (DEL propagated)
    nil       conflict: the key does not exist
    [version, raw, schema, updated_ms, updated_by]   conflict: the current state
  Errors:
    ERR        expected_version is not an integer in range
    WRONGTYPE  the key exists and is not a context
]]

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

local expected = strict_int(ARGV[1])
if not expected or expected < 0 or expected > MAX_EXPECTED then
  return redis.error_reply('ERR expected_version must be an integer from 0 to '
    .. string.format('%.0f', MAX_EXPECTED))
end

local key = KEYS[1]
local t = redis.call('TYPE', key)
if type(t) == 'table' then t = t.ok end
if t == 'none' then return false end
local h = t == 'hash' and redis.call('HMGET', key, 'version', 'raw', 'schema', 'updated_ms',
  'updated_by') or {}
local v = strict_int(h[1] or nil)
if not v or v < 1 then
  return redis.error_reply('WRONGTYPE Operation against a key that is not a ctxlink context')
end
if v ~= expected then
  return { v, h[2] or '', h[3] or '', strict_int(h[4] or nil) or 0, h[5] or '' }
end
redis.call('DEL', key)
return 1
