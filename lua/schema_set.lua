#!lua
--[[
  schema_set.lua - the registry write of CTX.SCHEMA.SET for servers without the module
  (docs/PROTOCOL.md, "Schema registry" and "Lua engine"). Runs after prelude.lua (name_ok,
  BAD_NAME, type_of, err).

  Shebang (Redis 7.0+, script flags): write deny-oom, like CTX.SCHEMA.SET.

  The SDK compiles the descriptor set, checks the message type, the version field and the
  change from the revision it read (COMPAT, FORCE) through the C core, then calls:

  KEYS[1]  "__ctx:schema:<name>"   the registry entry
  KEYS[2]  "__ctx:schemas"         the set of registered names
           (on Redis Cluster: one slot's copies, "__ctx:{<tag>}:schema:<name>" and
           "__ctx:{<tag>}:schemas", with the same tag)
  ARGV[1]  name
  ARGV[2]  message type (full name)
  ARGV[3]  serialized FileDescriptorSet
  ARGV[4]  version field name ("version" unless VERSIONFIELD)
  ARGV[5]  compat: "WIRE_JSON" or "WIRE"
  ARGV[6]  the revision the SDK read before checking the change (0 = no entry)
  ARGV[7]  "1" when the SDK found this very definition (same digest and compat) registered: a
           missing copy is written under revision ARGV[6] instead of the next one (a repair)
  ARGV[8]  "0" for a cluster slot's copy other than the one the SDK read (absent or "1": the copy
           it read, whose revision must still be ARGV[6])
  ARGV[9]  HISTORY: "0" .. "1000" (changes kept per context); "" or absent: keep the entry's
           (0 for a new name)
  ARGV[10] HISTORYPAYLOADS: "1" / "0"; "" or absent: keep the entry's (0 for a new name)
  ARGV[11] FEED: "0" .. "10000000" (changes kept in the schema's change feed); "" or absent: keep
           the entry's (0 for a new name). Above 0 refused on a cluster's copy (a tagged KEYS[1]).
  ARGV[12] WINDOW: "1" .. "255" (write records kept per context); "" or absent: keep the entry's
           (16 for a new name)

  digest = sha1hex("<#type>:<type><#vfield>:<vfield><fds>"), lengths in bytes (the C core's
  ctx_Digest). No validation plan is stored: the SDK generates it from the entry
  (docs/PROTOCOL.md, "The validation plan"); a `plan` field left by an older SDK is removed.

  Replies:
    the revision (integer). When the entry already holds this very definition (same digest,
    same compat, same history settings and window; an entry's compat is WIRE in any ASCII case, else WIRE_JSON, as the module
    reads it) nothing is written and the current revision is returned; if that entry's content
    no longer hashes to its digest (edited by hand) or KEYS[2] does not list the name, it is
    written again under the same revision. The entry's revision is read as the module reads it
    (prelude's strict_int; unreadable or negative is 0). Every check comes before the first
    write, so an error writes nothing. Otherwise
    HSET KEYS[1] type fds revision vfield digest compat history hpayload feed window,
    HDEL KEYS[1] plan,
    SADD KEYS[2] name;
    the reply is ARGV[6] + 1 (ARGV[6] with ARGV[7] when above 0), also over another copy at an
    older revision.
  Errors:
    CTXSCHEMA invalid schema name: 1 to 128 bytes of A-Z a-z 0-9 _ . - :
    CTXSCHEMA unknown COMPAT '<ARGV[5]>': use WIRE_JSON or WIRE
    ERR HISTORY must be an integer from 0 to 1000
    ERR HISTORYPAYLOADS must be yes or no
    ERR FEED must be an integer from 0 to 10000000
    ERR WINDOW must be an integer from 1 to 255
    CTXSCHEMA a change feed needs a standalone server or a replica set (Redis Cluster: ...)
    CTXSCHEMA the registry key does not match the name
    CTXSCHEMA the registry key holds another type
    CTXSCHEMA the registry index '__ctx:schemas' holds another type   (KEYS[2] not a set)
    CTXSCHEMA concurrent registration, retry   (the copy the SDK read is not at revision ARGV[6],
                                                or another copy is past the revision written; the
                                                SDK reads and decides again, a few times)
]]

local entry, index = KEYS[1], KEYS[2]
local name, mtype, fds, vfield, compat = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local seen = tonumber(ARGV[6]) or 0
local keep = ARGV[7] == '1'
local first = ARGV[8] ~= '0'
-- the history settings: checked before anything is read or written (HISTORY_MAX: the C core's
-- CTX_HISTORY_MAX, compared by a test)
local HISTORY_MAX = 1000
local hist_arg, hpay_arg = ARGV[9] or '', ARGV[10] or ''
local hist_new = strict_int(hist_arg)
if hist_arg ~= '' and (not hist_new or hist_new < 0 or hist_new > HISTORY_MAX) then
  return err('ERR', 'HISTORY must be an integer from 0 to ' .. HISTORY_MAX)
end
if hpay_arg ~= '' and hpay_arg ~= '1' and hpay_arg ~= '0' then
  return err('ERR', 'HISTORYPAYLOADS must be yes or no')
end
-- FEED_MAX: the C core's CTX_FEED_MAX
local FEED_MAX = 10000000
local feed_arg = ARGV[11] or ''
local feed_new = strict_int(feed_arg)
if feed_arg ~= '' and (not feed_new or feed_new < 0 or feed_new > FEED_MAX) then
  return err('ERR', 'FEED must be an integer from 0 to ' .. FEED_MAX)
end
if feed_new and feed_new > 0 and string.match(entry, '^__ctx:{') then
  return err('CTXSCHEMA', 'a change feed needs a standalone server or a replica set (Redis '
    .. 'Cluster: see docs/PROTOCOL.md, "Change feed")')
end
-- WINDOW_MAX / WINDOW_DEFAULT: prelude's (the C core's CTX_WINDOW_MAX / CTX_WINDOW_DEFAULT)
local win_arg = ARGV[12] or ''
local win_new = strict_int(win_arg)
if win_arg ~= '' and (not win_new or win_new < 1 or win_new > WINDOW_MAX) then
  return err('ERR', 'WINDOW must be an integer from 1 to ' .. WINDOW_MAX)
end
-- an entry's window as the module reads it: absent, unreadable or out of range is the default
local function win_of(v)
  local n = strict_int(v or nil)
  if not n or n < 1 or n > WINDOW_MAX then return WINDOW_DEFAULT end
  return n
end
local function feed_of(v)
  local n = strict_int(v or nil)
  if not n or n < 0 or n > FEED_MAX then return 0 end
  return n
end
-- an entry's settings as the module reads them: unreadable or out of range is off
local function hist_of(v)
  local n = strict_int(v or nil)
  if not n or n < 0 or n > HISTORY_MAX then return 0 end
  return n
end

if not name_ok(name) then return err('CTXSCHEMA', BAD_NAME) end
if compat ~= 'WIRE_JSON' and compat ~= 'WIRE' then
  return err('CTXSCHEMA', "unknown COMPAT '" .. tostring(compat) .. "': use WIRE_JSON or WIRE")
end
-- the plain entry, or (Redis Cluster) the copy of one slot: __ctx:{<tag>}:schema:<name>
local tag = string.match(entry, '^__ctx:{(%d+)}:schema:') or ''
if entry ~= registry_key(tag, name) or index ~= sub(entry, 1, #entry - #name - 7) .. 'schemas' then
  return err('CTXSCHEMA', 'the registry key does not match the name')
end

local t = type_of(entry)
if t ~= 'none' and t ~= 'hash' then
  return err('CTXSCHEMA', 'the registry key holds another type')
end
local it = type_of(index)
if it ~= 'none' and it ~= 'set' then
  return err('CTXSCHEMA', "the registry index '" .. index .. "' holds another type")
end

local function registry_digest(ty, vf, f)
  return redis.sha1hex(#ty .. ':' .. ty .. #vf .. ':' .. vf .. f)
end
local digest = registry_digest(mtype, vfield, fds)

-- an entry's category as the module reads it: WIRE in any ASCII case is WIRE, anything else
-- (absent, another word) WIRE_JSON
local function category(v)
  if v and string.upper(v) == 'WIRE' then return 'WIRE' end
  return 'WIRE_JSON'
end

-- a copy that does not exist yet (a new name, or a cluster slot's missing copy) joins at `seen`
local revision, repair = seen, false
if t == 'hash' then
  local h = redis.call('HMGET', entry, 'revision', 'digest', 'type', 'fds', 'vfield', 'compat',
    'history', 'hpayload', 'feed', 'window')
  -- read as the module reads it (Redis' string2ll); unreadable or negative counts as 0
  revision = strict_int(h[1] or nil) or 0
  if revision < 0 then revision = 0 end
  -- settings not given keep the entry's
  if hist_arg == '' then hist_arg = tostring(hist_of(h[7])) end
  if hpay_arg == '' then hpay_arg = h[8] == '1' and '1' or '0' end
  if feed_arg == '' then feed_arg = tostring(feed_of(h[9])) end
  if win_arg == '' then win_arg = tostring(win_of(h[10])) end
  if h[2] == digest and category(h[6]) == compat and revision > 0
      and hist_of(h[7]) == tonumber(hist_arg) and (h[8] == '1') == (hpay_arg == '1')
      and feed_of(h[9]) == tonumber(feed_arg) and win_of(h[10]) == tonumber(win_arg) then
    -- the very same definition: nothing changes, unless the entry was damaged by hand (its
    -- content no longer hashes to its digest): then it is written again, same revision
    if h[3] and h[4] and h[5] and registry_digest(h[3], h[5], h[4]) == digest
        and redis.call('SISMEMBER', index, name) == 1 then
      return revision
    end
    repair = true
  end
end
if not repair then
  local target = (keep and seen > 0) and seen or seen + 1
  -- the copy the SDK read must still be at `seen`; another copy may lag behind (a node that
  -- missed a registration) and is overwritten, but one already past `target` was written by a
  -- newer registration
  if (first and revision ~= seen) or (not first and revision > target) then
    return err('CTXSCHEMA', 'concurrent registration, retry')
  end
  revision = target
end
if hist_arg == '' then hist_arg = '0' end
if hpay_arg == '' then hpay_arg = '0' end
if feed_arg == '' then feed_arg = '0' end
if win_arg == '' then win_arg = tostring(WINDOW_DEFAULT) end
redis.call('HSET', entry, 'type', mtype, 'fds', fds, 'revision', fmt('%.0f', revision),
  'vfield', vfield, 'digest', digest, 'compat', compat, 'history', hist_arg, 'hpayload', hpay_arg,
  'feed', feed_arg, 'window', win_arg)
redis.call('HDEL', entry, 'plan')
redis.call('SADD', index, name)
return revision
