#!lua flags=no-writes
--[[
  schema_get.lua - CTX.SCHEMA.GET for servers without the module.

  Shebang (Redis 7.0+, script flags): read-only, like CTX.SCHEMA.GET.

  KEYS[1]  "__ctx:schema:<name>"
  ARGV     none

  Replies:
    [message_type, descriptor_set, revision (integer)]
    nil   no entry, or an entry without type, fds or an integer revision
  Errors:
    CTXSCHEMA invalid schema name: 1 to 128 bytes of A-Z a-z 0-9 _ . - :   (as the module)
]]

local entry = KEYS[1]
-- the name, as the module checks it before any lookup: from "__ctx:schema:<name>" or a slot copy
local name = string.match(entry, '^__ctx:{%d+}:schema:(.*)$') or string.sub(entry, 14)
if #name < 1 or #name > 128 or string.find(name, '[^A-Za-z0-9_.:%-]') then
  return redis.error_reply('CTXSCHEMA invalid schema name: 1 to 128 bytes of A-Z a-z 0-9 _ . - :')
end
local t = redis.call('TYPE', entry)
if type(t) == 'table' then t = t.ok end
if t ~= 'hash' then return false end
local h = redis.call('HMGET', entry, 'type', 'fds', 'revision')
if not h[1] or not h[2] or not h[3] or not string.find(h[3], '^%-?%d+$') then
  return false
end
return { h[1], h[2], tonumber(h[3]) }
