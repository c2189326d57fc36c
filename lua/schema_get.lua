#!lua flags=no-writes
--[[
  schema_get.lua - CTX.SCHEMA.GET for servers without the module.

  Shebang (Redis 7.0+, script flags): read-only, like CTX.SCHEMA.GET.

  KEYS[1]  "__ctx:schema:<name>"
  ARGV     none

  Replies:
    [message_type, descriptor_set, revision (integer)]
    nil   no entry, or an entry without type, fds or an integer revision
]]

local entry = KEYS[1]
local t = redis.call('TYPE', entry)
if type(t) == 'table' then t = t.ok end
if t ~= 'hash' then return false end
local h = redis.call('HMGET', entry, 'type', 'fds', 'revision')
if not h[1] or not h[2] or not h[3] or not string.find(h[3], '^%-?%d+$') then
  return false
end
return { h[1], h[2], tonumber(h[3]) }
