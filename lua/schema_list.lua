#!lua flags=no-writes
--[[
  schema_list.lua - CTX.SCHEMA.LIST for servers without the module.

  Shebang (Redis 7.0+, script flags): read-only, like CTX.SCHEMA.LIST.

  KEYS[1]  "__ctx:schemas"
  ARGV     none

  Replies:
    array of the registered names, sorted bytewise (a byte comparison, not Lua's `<`, which
    follows the server's locale); an empty array when KEYS[1] does not exist
  Errors:
    CTXSCHEMA  KEYS[1] holds another type than a set
]]

local byte, min = string.byte, math.min
local t = redis.call('TYPE', KEYS[1])
if type(t) == 'table' then t = t.ok end
if t == 'none' then return {} end
if t ~= 'set' then
  return redis.error_reply("CTXSCHEMA the registry index '" .. KEYS[1] .. "' holds another type")
end
local names = redis.call('SMEMBERS', KEYS[1])

local function bytewise_less(a, b)
  for i = 1, min(#a, #b) do
    local x, y = byte(a, i), byte(b, i)
    if x ~= y then return x < y end
  end
  return #a < #b
end

table.sort(names, bytewise_less)
return names
