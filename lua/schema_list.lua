#!lua flags=no-writes
--[[
  schema_list.lua - CTX.SCHEMA.LIST for servers without the module.
  Runs after prelude.lua (type_of, err).

  Shebang (Redis 7.0+, script flags): read-only, like CTX.SCHEMA.LIST.

  KEYS[1]  "__ctx:schemas"
  ARGV     none

  Replies:
    array of the registered names, sorted bytewise (a byte comparison, not Lua's `<`, which
    follows the server's locale); an empty array when KEYS[1] does not exist
  Errors:
    CTXSCHEMA  KEYS[1] holds another type than a set
]]

local t = type_of(KEYS[1])
if t == 'none' then return {} end
if t ~= 'set' then
  return err('CTXSCHEMA', "the registry index '" .. KEYS[1] .. "' holds another type")
end
local names = redis.call('SMEMBERS', KEYS[1])

local function bytewise_less(a, b)
  for i = 1, math.min(#a, #b) do
    local x, y = byte(a, i), byte(b, i)
    if x ~= y then return x < y end
  end
  return #a < #b
end

table.sort(names, bytewise_less)
return names
