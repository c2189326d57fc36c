#!lua flags=allow-oom
--[[
  schema_del.lua - CTX.SCHEMA.DEL for servers without the module.
  Runs after prelude.lua (name_ok, BAD_NAME, type_of, err).

  Shebang (Redis 7.0+, script flags): write, not deny-oom, like CTX.SCHEMA.DEL.

  KEYS[1]  "__ctx:schema:<name>"
  KEYS[2]  "__ctx:schemas"
  ARGV[1]  name

  Replies:
    1  a schema was removed (DEL of the entry and/or SREM of the name)
    0  there was none
  Errors:
    CTXSCHEMA  invalid schema name: 1 to 128 bytes of A-Z a-z 0-9 _ . - :   (checked first)
    CTXSCHEMA  KEYS[2] holds another type than a set (nothing is written)
  Contexts using the schema stay readable and deletable; cas.lua refuses writes to them with
  "CTXSCHEMA unknown schema" until the name is registered again.
]]

local name = ARGV[1]
if not name_ok(name) then return err('CTXSCHEMA', BAD_NAME) end
local t = type_of(KEYS[2])
if t ~= 'set' and t ~= 'none' then
  return err('CTXSCHEMA', "the registry index '" .. KEYS[2] .. "' holds another type")
end
local removed = 0
if redis.call('EXISTS', KEYS[1]) == 1 then
  if redis.call('DEL', KEYS[1]) > 0 then removed = 1 end
end
if redis.call('SREM', KEYS[2], name) > 0 then removed = 1 end
return removed
