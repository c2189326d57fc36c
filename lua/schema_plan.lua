#!lua
--[[
  schema_plan.lua - attach a validation plan to a registry entry (docs/PROTOCOL.md,
  "The validation plan"), e.g. to an entry written by the module, after cas.lua replied
  "CTXSCHEMA noplan <name>".

  Shebang (Redis 7.0+, script flags): write deny-oom.

  KEYS[1]  "__ctx:schema:<name>"
  ARGV[1]  the digest the plan was compiled for
  ARGV[2]  the plan (canonical JSON)

  Replies:
    1  the entry's digest is ARGV[1] and the plan's digest too: HSET KEYS[1] plan ARGV[2]
    0  no entry, or the entry holds another definition now (nothing written)
]]

local entry, digest, plan = KEYS[1], ARGV[1], ARGV[2]
local t = redis.call('TYPE', entry)
if type(t) == 'table' then t = t.ok end
if t ~= 'hash' then return 0 end
if redis.call('HGET', entry, 'digest') ~= digest then return 0 end
local ok, p = pcall(cjson.decode, plan)
if not ok or type(p) ~= 'table' or p.digest ~= digest then return 0 end
if redis.call('HGET', entry, 'plan') == plan then return 1 end
redis.call('HSET', entry, 'plan', plan)
return 1
