#!lua
--[[
  schema_set.lua - the registry write of CTX.SCHEMA.SET for servers without the module
  (docs/PROTOCOL.md, "Schema registry" and "Lua engine").

  Shebang (Redis 7.0+, script flags): write deny-oom, like CTX.SCHEMA.SET.

  The SDK parses the descriptor set, checks the message type, the version field and the
  compatibility with the revision it read (and FORCE) in Python, compiles the plan, then calls:

  KEYS[1]  "__ctx:schema:<name>"   the registry entry
  KEYS[2]  "__ctx:schemas"         the set of registered names
           (on Redis Cluster: one slot's copies, "__ctx:{<tag>}:schema:<name>" and
           "__ctx:{<tag>}:schemas", with the same tag)
  ARGV[1]  name
  ARGV[2]  message type (full name)
  ARGV[3]  serialized FileDescriptorSet
  ARGV[4]  version field name ("version" unless VERSIONFIELD)
  ARGV[5]  plan (canonical JSON, its "digest" must be the entry's digest; "" for none)
  ARGV[6]  the revision the SDK read before checking compatibility (0 = no entry)
  ARGV[7]  "1" when the SDK found this very definition registered: a missing copy is written
           under revision ARGV[6] instead of the next one (a repair; optional)

  digest = sha1hex("<#type>:<type><#vfield>:<vfield><fds>"), lengths in bytes.

  Replies:
    the revision (integer). When the entry already holds this very definition (same digest)
    nothing is written and the current revision is returned; if that entry's content no longer
    hashes to its digest (edited by hand) it is written again under the same revision. Every
    check comes before the first write, so an error writes nothing. Otherwise
    HSET KEYS[1] type fds revision vfield digest plan + SADD KEYS[2] name, revision + 1.
  Errors:
    CTXSCHEMA invalid schema name: 1 to 128 bytes of A-Z a-z 0-9 _ . - :
    CTXSCHEMA the registry key does not match the name
    CTXSCHEMA the registry key holds another type
    CTXSCHEMA the registry index '__ctx:schemas' holds another type   (KEYS[2] not a set)
    CTXSCHEMA the plan does not belong to this definition   (plan digest != digest)
    CTXSCHEMA concurrent registration, retry   (the entry's revision is not ARGV[6])
]]

local entry, index = KEYS[1], KEYS[2]
local name, mtype, fds, vfield, plan = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local seen = tonumber(ARGV[6]) or 0
local keep = ARGV[7] == '1'

if #name < 1 or #name > 128 or not string.find(name, '^[A-Za-z0-9_.:%-]+$') then
  return redis.error_reply('CTXSCHEMA invalid schema name: 1 to 128 bytes of A-Z a-z 0-9 _ . - :')
end
-- the plain entry, or (Redis Cluster) the copy of one slot: __ctx:{<tag>}:schema:<name>
local tag = string.match(entry, '^__ctx:{(%d+)}:schema:')
local prefix = tag and ('__ctx:{' .. tag .. '}:') or '__ctx:'
if entry ~= prefix .. 'schema:' .. name or index ~= prefix .. 'schemas' then
  return redis.error_reply('CTXSCHEMA the registry key does not match the name')
end

local t = redis.call('TYPE', entry)
if type(t) == 'table' then t = t.ok end
if t ~= 'none' and t ~= 'hash' then
  return redis.error_reply('CTXSCHEMA the registry key holds another type')
end

local it = redis.call('TYPE', index)
if type(it) == 'table' then it = it.ok end
if it ~= 'none' and it ~= 'set' then
  return redis.error_reply("CTXSCHEMA the registry index '" .. index .. "' holds another type")
end

local digest = redis.sha1hex(#mtype .. ':' .. mtype .. #vfield .. ':' .. vfield .. fds)
if plan ~= '' then
  local ok, p = pcall(cjson.decode, plan)
  if not ok or type(p) ~= 'table' or p.digest ~= digest then
    return redis.error_reply('CTXSCHEMA the plan does not belong to this definition')
  end
end

-- a copy that does not exist yet (a new name, or a cluster slot's missing copy) joins at `seen`
local revision, repair = seen, false
if t == 'hash' then
  local h = redis.call('HMGET', entry, 'revision', 'digest', 'type', 'fds', 'vfield')
  local r = h[1] and string.find(h[1], '^%d+$') and tonumber(h[1]) or 0
  revision = r
  if h[2] == digest and revision > 0 then
    -- the very same definition: nothing changes, unless the entry was damaged by hand (its
    -- content no longer hashes to its digest): then it is written again, same revision
    local intact = h[3] and h[4] and h[5] and
      redis.sha1hex(#h[3] .. ':' .. h[3] .. #h[5] .. ':' .. h[5] .. h[4]) == digest
    if intact then return revision end
    repair = true
  end
end
if revision ~= seen and not repair then
  return redis.error_reply('CTXSCHEMA concurrent registration, retry')
end

if not repair and not keep then revision = revision + 1 end
local rs = string.format('%.0f', revision)
if plan ~= '' then
  redis.call('HSET', entry, 'type', mtype, 'fds', fds, 'revision', rs, 'vfield', vfield,
    'digest', digest, 'plan', plan)
else
  redis.call('HSET', entry, 'type', mtype, 'fds', fds, 'revision', rs, 'vfield', vfield,
    'digest', digest)
  redis.call('HDEL', entry, 'plan')
end
redis.call('SADD', index, name)
return revision
