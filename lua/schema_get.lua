#!lua flags=no-writes
--[[
  schema_get.lua - CTX.SCHEMA.GET for servers without the module.
  Runs after prelude.lua (name_ok, BAD_NAME, type_of, err).

  Shebang (Redis 7.0+, script flags): read-only, like CTX.SCHEMA.GET.

  KEYS[1]  "__ctx:schema:<name>" (on a cluster, a slot's copy "__ctx:{<tag>}:schema:<name>")
  ARGV     none

  Replies:
    [message_type, descriptor_set, revision (integer), compat ("WIRE_JSON" / "WIRE"),
     history (integer, 0 = off), history payloads (integer 1 / 0), feed (integer, 0 = off),
     window (integer 1 .. 255)]: the settings as the module reads them (absent or unreadable:
     WIRE_JSON, 0, 0, 0, 16)
    nil   no entry, or an entry without type, fds or an integer revision
  Errors:
    CTXSCHEMA invalid schema name: 1 to 128 bytes of A-Z a-z 0-9 _ . - :   (as the module)
]]

local entry = KEYS[1]
-- the name, as the module checks it before any lookup
local name = string.match(entry, '^__ctx:{%d+}:schema:(.*)$') or sub(entry, 14)
if not name_ok(name) then return err('CTXSCHEMA', BAD_NAME) end
if type_of(entry) ~= 'hash' then return false end
local h = redis.call('HMGET', entry, 'type', 'fds', 'revision', 'compat', 'history', 'hpayload',
  'feed', 'window')
local revision = strict_int(h[3] or nil)   -- as the module's RedisModule_StringToLongLong
if not h[1] or not h[2] or not revision then return false end
local compat = (h[4] and string.upper(h[4]) == 'WIRE') and 'WIRE' or 'WIRE_JSON'
local hist = strict_int(h[5] or nil)
if not hist or hist < 0 or hist > 1000 then hist = 0 end
local feed = strict_int(h[7] or nil)
if not feed or feed < 0 or feed > 10000000 then feed = 0 end
local window = strict_int(h[8] or nil)
if not window or window < 1 or window > WINDOW_MAX then window = WINDOW_DEFAULT end
return { h[1], h[2], revision, compat, hist, h[6] == '1' and 1 or 0, feed, window }
