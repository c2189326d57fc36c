#!lua
--[[
  del.lua - CTX.DEL for servers without the module (docs/PROTOCOL.md, "Lua engine").
  Runs after prelude.lua (strict_int, read_ctx, ctx_reply, err, wrongtype).

  Shebang (Redis 7.0+, script flags): write deny-oom, like CTX.DEL: refused under maxmemory
  before it runs (a script without flags could DEL under OOM).

  KEYS[1]  the context key
  KEYS[2]  its history stream (cas_history.lua): deleted with it; required when the context's
           schema keeps history (else "CTXSCHEMA stale <schema>": the SDK re-sends with it)
  KEYS[#KEYS] the schema's change feed "__ctxf:<schema>", required (last) when the schema has a
           feed (standalone only): it gets a `delete` entry (docs/PROTOCOL.md, "Change feed")
  ARGV[1]  expected_version: decimal integer 0 .. 9007199254740990 (2^53 - 2; Lua numbers are
           doubles, the module accepts up to 2^63 - 2)
  ARGV[2]  the write id (ID), 1 to 64 bytes; "" or absent: none. Only checked: a delete leaves
           no window to replay from.
  ARGV[3]  INC: the incarnation the delete is based on, 16 hex digits ("" or absent: none)
  ARGV[4]  cluster: the slot tag of KEYS[1]'s slot (the registry copy read); "" or absent
  ARGV[5]  the key's wait channel ("" or absent: publish nothing), ARGV[6] "1": a shard channel
           (wait_publish.lua)

  Replies:
    1         the stored version equalled expected_version: the key was deleted (DEL propagated)
              and "deleted" published on its wait channel (wait_publish.lua; store.wait)
    nil       conflict: the key does not exist
    [version, raw, schema, updated_ms, updated_by, incarnation]   conflict: the current state;
              with an ID [version, raw, schema, updated_ms, updated_by, oldest_known, changed,
              incarnation] (changed empty), as CTX.CAS
  Errors:
    ERR        expected_version is not an integer in range; write id not 1 to 64 bytes; INC not
               16 hex digits or all zero
    WRONGTYPE  the key exists and is not a context (v3 / v2 string or v1 hash)
    CTXGONE    INC given, expected_version >= 1 and the context's incarnation is another one
]]

local expected = strict_int(ARGV[1])
if not expected or expected < 0 or expected > MAX_EXPECTED then
  return err('ERR', 'expected_version must be an integer from 0 to ' .. fmt('%.0f', MAX_EXPECTED))
end
local wid = ARGV[2]
if wid == '' then wid = nil end
if wid and #wid > 64 then return err('ERR', 'write id must be 1 to 64 bytes') end
local based = ARGV[3]
if based == '' then based = nil end
if based then
  based = unhex(based)
  if not based then return err('ERR', 'INC must be 16 hex digits, not all zero') end
end

local v, n, ms, schema, by, hl, val, raw, fv, inc = read_ctx(KEYS[1])
if v == nil then return false end
if v == false then return wrongtype() end
if based and expected >= 1 and inc ~= based then return gone(inc, based) end
if v ~= expected then
  local state = ctx_reply(v, n, ms, schema, by, hl, val, raw, fv, inc)
  if wid then -- as CTX.CAS: a command with ID gets oldest_known and an empty `changed`
    state[6], state[7], state[8] = v - n + 1, {}, state[6]
  end
  return state
end
-- [include wait_publish]
-- the history goes with the context (first: a refused DEL of it leaves both)
local skey = name_ok(schema) and registry_key(ARGV[4] or '', schema)
local h = skey and redis.pcall('HMGET', skey, 'history', 'feed')
local hist = type(h) == 'table' and strict_int(h[1] or nil) or 0
local feed = type(h) == 'table' and (ARGV[4] or '') == '' and strict_int(h[2] or nil) or 0
local hk, fk = KEYS[2], feed > 0 and feed <= 1e7 and '__ctxf:' .. schema
if hk and sub(hk, 1, 7) ~= '__ctxh:' then hk = nil end
if hist > 0 and hist <= 1000 and not hk or fk and KEYS[#KEYS] ~= fk then
  return err('CTXSCHEMA', 'stale ' .. schema)
end
-- the change feed gets a `delete` entry (the deleted version; no writer)
if fk then
  local t = redis.call('TIME')
  redis.call('XADD', fk, 'MAXLEN', '=', feed, '*', 'k', 'delete', 'i', inc and hex(inc) or '',
    't', fmt('%.0f', t[1] * 1000 + floor(t[2] / 1000)), 'b', '', 'w', wid or '', 'v', fmt('%.0f', v),
    'key', KEYS[1])
end
if hk then redis.call('DEL', hk) end
redis.call('DEL', KEYS[1])
wait_publish(ARGV[5], ARGV[6], 'deleted')
return 1
