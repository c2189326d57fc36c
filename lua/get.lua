#!lua flags=no-writes
--[[
  get.lua - CTX.GET for servers without the module (docs/PROTOCOL.md, "Lua engine").

  Shebang (Redis 7.0+, script flags): read-only, like CTX.GET (EVALSHA_RO, replicas, under OOM).

  KEYS[1]  the context key
  ARGV     none

  Replies:
    nil                                                  the key does not exist
    [version, raw, schema, updated_ms, updated_by]       a context, storage format v2 (a string
                                                         "CTX\2" + header) or v1 (a hash;
                                                         missing fields as "" / 0)
  Errors:
    WRONGTYPE  the key exists and is not a context (a string that fails the v2 type rule, a
               hash without a decimal integer version >= 1, any other type)
]]

local sub = string.sub

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

local key = KEYS[1]
local got = redis.pcall('GET', key)
if got == false then return false end
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
  return { v, sub(got, hl + 1), sub(got, at, at + sl - 1), ms, sub(got, at + sl, hl) }
end
local t = redis.call('TYPE', key)
if type(t) == 'table' then t = t.ok end
if t ~= 'hash' then return wrongtype() end
local h = redis.call('HMGET', key, 'version', 'raw', 'schema', 'updated_ms', 'updated_by')
local v = strict_int(h[1] or nil)
if not v or v < 1 then return wrongtype() end
return { v, h[2] or '', h[3] or '', strict_int(h[4] or nil) or 0, h[5] or '' }
