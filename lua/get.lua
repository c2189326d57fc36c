#!lua flags=no-writes
--[[
  get.lua - CTX.GET for servers without the module (docs/PROTOCOL.md, "Lua engine").

  Shebang (Redis 7.0+, script flags): read-only, like CTX.GET (EVALSHA_RO, replicas, under OOM).

  KEYS[1]  the context key
  ARGV     none

  Replies:
    nil                                                  the key does not exist
    [version, raw, schema, updated_ms, updated_by]       a context (version and updated_ms
                                                         integers, missing fields as "" / 0)
  Errors:
    WRONGTYPE  the key exists and is not a context (not a hash, or a hash without a decimal
               integer version >= 1)
]]

local function strict_int(s)
  -- A decimal integer as Redis' string2ll reads it (no '+', no leading zeros), or nil.
  if not s or #s == 0 or #s > 20 then return nil end
  if s == '0' then return 0 end
  if not string.find(s, '^%-?[1-9]%d*$') then return nil end
  local n = tonumber(s)
  if n >= 9223372036854775807 or n < -9223372036854775808 then return nil end
  return n
end

local key = KEYS[1]
local t = redis.call('TYPE', key)
if type(t) == 'table' then t = t.ok end
if t == 'none' then return false end
if t ~= 'hash' then
  return redis.error_reply('WRONGTYPE Operation against a key that is not a ctxlink context')
end
local h = redis.call('HMGET', key, 'version', 'raw', 'schema', 'updated_ms', 'updated_by')
local v = strict_int(h[1] or nil)
if not v or v < 1 then
  return redis.error_reply('WRONGTYPE Operation against a key that is not a ctxlink context')
end
return { v, h[2] or '', h[3] or '', strict_int(h[4] or nil) or 0, h[5] or '' }
