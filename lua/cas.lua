#!lua
--[[
  cas.lua - CTX.CAS for servers without the module (docs/PROTOCOL.md, "Lua engine").

  Shebang (Redis 7.0+, script flags): write deny-oom, like CTX.CAS: refused under maxmemory before it runs.

  KEYS[1]  the context key: the only key the script declares and the only key it writes
  ARGV[1]  expected_version: decimal integer 0 .. 9007199254740990 (2^53 - 2; Lua numbers are
           doubles, the module accepts up to 2^63 - 2)
  ARGV[2]  payload (serialized protobuf message)
  ARGV[3]  "1" when the caller gave SCHEMA (then ARGV[8] is that schema), "0" when not
  ARGV[4]  writer id for updated_by ("" for none)
  ARGV[5]  max_payload_bytes
  ARGV[6]  max_depth (root message = depth 0)
  ARGV[7]  unknown fields: "reject" or "allow"
  ARGV[8]  the schema name to validate against: the SCHEMA argument on create, the context's
           stored schema on update ("" when the caller does not know it)
  ARGV[9]  on Redis Cluster, the slot tag of KEYS[1]'s slot (the smallest decimal integer whose
           CRC16 lands in that slot, docs/PROTOCOL.md "Redis Cluster"); "" or absent on a
           standalone server

  The registry entry is read, not declared: "__ctx:schema:<ARGV[8]>", or on a cluster the copy
  in KEYS[1]'s own slot, "__ctx:{<ARGV[9]>}:schema:<ARGV[8]>". Redis 7 treats every declared
  key of a script as read-write, so declaring the entry would make agents hold write access to
  the registry; read undeclared, read access (ACL %R~__ctx:*) is enough. On a cluster the
  server refuses a read outside KEYS[1]'s slot, and while that slot migrates a read of a copy
  that already moved fails ("Script attempted to access a non local key"): the SDK retries.

  Checks, in the module's order; the first failure replies and nothing is written:
    ERR        expected_version is not an integer in range
    WRONGTYPE  KEYS[1] exists and is not a context (not a hash, no integer version >= 1)
    conflict   stored version (0 when absent) != expected_version: reply the current state
               [version, raw, schema, updated_ms, updated_by] or nil when there is no context
    CTXSCHEMA  "schema required to create a context", "schema mismatch: ...",
               "the context has no schema field",
               "invalid schema name: 1 to 128 bytes of A-Z a-z 0-9 _ . - :" (ARGV[8],
               checked before any key is built from it),
               "unknown schema '<name>'" (no registry entry),
               "registry entry for schema '<name>' is damaged ..." (type, fds or vfield
               missing, or digest != sha1hex of the content: edited by hand, as the module),
               "noplan <name>" (entry without a plan, or plan digest != entry digest: the SDK
               compiles the plan, stores it with schema_plan.lua and retries),
               "schema key mismatch: the context uses '<name>'" (update without SCHEMA where
               ARGV[8] is not the context's schema: the SDK read a stale schema and retries)
    CTXTOOBIG  payload longer than max_payload_bytes
    CTXINVALID the payload fails the wire walk (see below) or lacks a required field
    CTXVERSION the payload's version field != expected_version + 1
  Success: HSET KEYS[1] raw, version, schema, updated_ms (server TIME), updated_by; reply the
  new version (integer).

  Field paths in CTXINVALID messages use field numbers (the plan carries no names), e.g.
  "field '10[2].1' (1): invalid UTF-8" where the module says "field 'items[2].sku' (1): ...".
  The walk follows module/core/ctx_validate.c; tags and lengths written with more than 5 bytes
  are rejected too (the module's upb decoder refuses them after its walk: CTXINVALID as well).
  Known limits: a proto2 [default = ...] on the version field is not in the plan; an absent
  version field reads as 0; a map entry without its value whose value type has required fields
  is not flagged (upb checks the empty value, the plan does not mark map entries).
]]

local byte, sub, find, floor = string.byte, string.sub, string.find, math.floor
local fmt = string.format

local TWO32 = 4294967296
local TWO31 = 2147483648
local MAX_EXPECTED = 9007199254740990

local function err(code, msg)
  return redis.error_reply(code .. ' ' .. msg)
end

local function strict_int(s)
  -- A decimal integer as Redis' string2ll reads it (no '+', no leading zeros), or nil.
  if not s or #s == 0 or #s > 20 then return nil end
  if s == '0' then return 0 end
  if not find(s, '^%-?[1-9]%d*$') then return nil end
  local n = tonumber(s)
  if n >= 9223372036854775807 or n < -9223372036854775808 then return nil end
  return n
end

-- ---- arguments ----------------------------------------------------------------------------

local expected = strict_int(ARGV[1])
if not expected or expected < 0 or expected > MAX_EXPECTED then
  return err('ERR', 'expected_version must be an integer from 0 to ' .. fmt('%.0f', MAX_EXPECTED))
end
local payload = ARGV[2]
local given = ARGV[3] == '1'
local by = ARGV[4] or ''
local max_payload = tonumber(ARGV[5]) or 1048576
local max_depth = tonumber(ARGV[6]) or 32
local allow_unknown = ARGV[7] == 'allow'
local ckey = KEYS[1]
local name = ARGV[8] or ''
local tag = ARGV[9] or ''

-- ---- key type and version -------------------------------------------------------------------

local function ktype(key)
  local t = redis.call('TYPE', key)
  if type(t) == 'table' then t = t.ok end
  return t
end

local kt = ktype(ckey)
local current, stored_schema = 0, nil
if kt ~= 'none' then
  if kt ~= 'hash' then
    return err('WRONGTYPE', 'Operation against a key that is not a ctxlink context')
  end
  local h = redis.call('HMGET', ckey, 'version', 'schema')
  local v = strict_int(h[1] or nil)
  if not v or v < 1 then
    return err('WRONGTYPE', 'Operation against a key that is not a ctxlink context')
  end
  current, stored_schema = v, h[2] or nil
end

if current ~= expected then
  if kt == 'none' then return false end
  local h = redis.call('HMGET', ckey, 'version', 'raw', 'schema', 'updated_ms', 'updated_by')
  return { current, h[2] or '', h[3] or '', strict_int(h[4] or nil) or 0, h[5] or '' }
end

-- ---- schema ---------------------------------------------------------------------------------

if kt == 'none' then
  if not given then return err('CTXSCHEMA', 'schema required to create a context') end
else
  if not stored_schema then
    return err('CTXSCHEMA', 'the context has no schema field')
  end
  if stored_schema ~= name then
    if given then
      return err('CTXSCHEMA', fmt("schema mismatch: the context uses '%s', not '%s'",
        sub(stored_schema, 1, 120), sub(name, 1, 120)))
    end
    return err('CTXSCHEMA', fmt("schema key mismatch: the context uses '%s'", sub(stored_schema, 1, 128)))
  end
end

-- The registry entry, read undeclared (see the header). The name becomes part of a key name:
-- checked first, as CTX.SCHEMA.SET checks it; the tag is a slot's decimal tag or nothing.
if #name < 1 or #name > 128 or find(name, '[^A-Za-z0-9_.:%-]') then
  return err('CTXSCHEMA', 'invalid schema name: 1 to 128 bytes of A-Z a-z 0-9 _ . - :')
end
local skey
if tag == '' then
  skey = '__ctx:schema:' .. name
elseif #tag <= 10 and find(tag, '^%d+$') then
  skey = '__ctx:{' .. tag .. '}:schema:' .. name
else
  return err('ERR', 'slot tag must be a decimal integer (ARGV[9])')
end

if ktype(skey) ~= 'hash' then
  return err('CTXSCHEMA', fmt("unknown schema '%s'", sub(name, 1, 120)))
end
local entry = redis.call('HMGET', skey, 'digest', 'plan', 'type', 'fds', 'vfield')
local digest, plan_json = entry[1] or nil, entry[2] or nil
local etype, efds, evfield = entry[3] or nil, entry[4] or nil, entry[5] or nil
-- As the module: an entry whose digest is not the digest of its content was edited by hand.
if not etype or not efds or not evfield or not digest
    or digest ~= redis.sha1hex(#etype .. ':' .. etype .. #evfield .. ':' .. evfield .. efds) then
  return err('CTXSCHEMA', fmt("registry entry for schema '%s' is damaged (edited outside "
    .. "CTX.SCHEMA.SET?); register the schema again", sub(name, 1, 120)))
end
if not plan_json then return err('CTXSCHEMA', 'noplan ' .. name) end
local ok, plan = pcall(cjson.decode, plan_json)
if not ok or type(plan) ~= 'table' or plan.v ~= 1 or plan.digest ~= digest then
  return err('CTXSCHEMA', 'noplan ' .. name)
end

-- ---- size -----------------------------------------------------------------------------------

local n = #payload
if n > max_payload then
  return err('CTXTOOBIG', fmt('payload is %d bytes, the limit is %d', n, max_payload))
end

-- ---- the plan, as lookup tables -----------------------------------------------------------------
-- M[i] (i = plan index + 1) = { [number] = {want, kind, repeated, ref}, req = {numbers} }
-- want is the wire type a non-packed occurrence must have.

local WANT = { v = 0, z = 0, e = 0, ['4'] = 5, ['8'] = 1, b = 2, s = 2, m = 2, g = 3 }
local M, E = {}, {}
local any_required = false
for i, pm in ipairs(plan.m) do
  local t = {}
  for num, spec in pairs(pm.f) do
    local kind = spec[1]
    t[tonumber(num)] = { WANT[kind], kind, spec[2] == 1, spec[3] + 1 }
  end
  t.req = pm.r
  if #pm.r > 0 then any_required = true end
  M[i] = t
end
for i, values in ipairs(plan.e) do
  local set = {}
  for _, v in ipairs(values) do set[v] = true end
  E[i] = set
end
local VF, VK = plan.vf, plan.vk

-- ---- wire primitives ------------------------------------------------------------------------
-- Positions are 1-based; a range is [p, e) (e is one past the last byte).

local s = payload

-- A varint of at most 10 bytes whose 10th byte is 0 or 1: its value (a double, exact below
-- 2^53) and the position after it; nil when malformed or truncated.
local function rv(p, e)
  local v, mul = 0, 1
  for i = 0, 9 do
    if p >= e then return nil end
    local b = byte(s, p)
    p = p + 1
    if b < 128 then
      if i == 9 and b > 1 then return nil end
      return v + b * mul, p
    end
    if i == 9 then return nil end
    v = v + (b - 128) * mul
    mul = mul * 128
  end
  return nil
end

-- The low and high 32 bits of the (valid) varint at p.
local function rv_split(p)
  local lo, hi, shift = 0, 0, 0
  for i = 0, 9 do
    local b = byte(s, p + i)
    local d = b % 128
    if i < 4 then
      lo = lo + d * 2 ^ (7 * i)
    elseif i == 4 then
      lo = lo + (d % 16) * 268435456
      hi = floor(d / 16)
    else
      hi = hi + d * 2 ^ (7 * i - 32) -- the 10th byte is 0 or 1: hi stays below 2^32
    end
    if b < 128 then break end
  end
  return lo % TWO32, hi % TWO32
end

-- The varint at p as C's (int32_t) cast of its 64-bit value.
local function rv_int32(p)
  local lo = 0
  for i = 0, 4 do
    local b = byte(s, p + i)
    local d = b % 128
    if i == 4 then d = d % 16 end
    lo = lo + d * 2 ^ (7 * i)
    if b < 128 then break end
  end
  if lo >= TWO31 then lo = lo - TWO32 end
  return lo
end

local function le(p, k)
  local v, mul = 0, 1
  for i = 0, k - 1 do
    v = v + byte(s, p + i) * mul
    mul = mul * 256
  end
  return v
end

-- Strict UTF-8 (as utf8_range): no overlongs, no surrogates, nothing above U+10FFFF.
-- Non-ASCII bytes are found with string.find; `hi_from`/`hi_at` cache the last search so the
-- whole payload is scanned once (strings are checked left to right).
local hi_from, hi_at = 0, 0
local function next_high(p)
  if p >= hi_from and p <= hi_at then return hi_at end
  hi_from = p
  hi_at = find(s, '[\128-\255]', p) or (n + 1)
  return hi_at
end

local function utf8_ok(p, e)
  while true do
    p = next_high(p)
    if p >= e then return true end
    local c = byte(s, p)
    local need, lo, hi = 0, 128, 191
    if c >= 194 and c <= 223 then
      need = 1
    elseif c == 224 then
      need, lo = 2, 160
    elseif (c >= 225 and c <= 236) or c == 238 or c == 239 then
      need = 2
    elseif c == 237 then
      need, hi = 2, 159
    elseif c == 240 then
      need, lo = 3, 144
    elseif c >= 241 and c <= 243 then
      need = 3
    elseif c == 244 then
      need, hi = 3, 143
    else
      return false
    end
    if p + need >= e then return false end
    local b = byte(s, p + 1)
    if b < lo or b > hi then return false end
    for i = 2, need do
      b = byte(s, p + i)
      if b < 128 or b > 191 then return false end
    end
    p = p + need + 1
  end
end

-- Skips one value of wire type wt whose tag was just read; groups nest, bounded by max_d.
local function skip(p, e, number, wt, depth, max_d)
  if wt == 0 then
    local _, q = rv(p, e)
    return q
  elseif wt == 1 then
    if e - p < 8 then return nil end
    return p + 8
  elseif wt == 5 then
    if e - p < 4 then return nil end
    return p + 4
  elseif wt == 2 then
    local len, q = rv(p, e)
    if not len or q - p > 5 or len > e - q then return nil end
    return q + len
  elseif wt == 3 then
    if depth + 1 > max_d then return nil end
    while p < e do
      local tag, q = rv(p, e)
      if not tag or q - p > 5 or tag > 4294967295 or tag < 8 then return nil end
      p = q
      local w = tag % 8
      local num = (tag - w) / 8
      if w == 4 then
        if num == number then return p end
        return nil
      end
      p = skip(p, e, num, w, depth + 1, max_d)
      if not p then return nil end
    end
    return nil
  end
  return nil
end

-- ---- error paths ----------------------------------------------------------------------------

local INVALID = {}
local invalid_msg

local function count_occurrences(start, stop, number)
  local c, p = 0, start
  while p and p < stop do
    local tag
    tag, p = rv(p, stop)
    if not tag then break end
    local w = tag % 8
    local num = (tag - w) / 8
    if num == number then c = c + 1 end
    p = skip(p, stop, num, w, 0, 101)
  end
  return c
end

-- The path to the message at depth d: level i (1..d) was entered through field SN[i]
-- (repeated: SR[i]) whose tag is at ST[i] in a parent message starting at SS[i]. The stacks are
-- filled on the way down, so no table is built per nested message.
local SN, SR, SS, ST = {}, {}, {}, {}
local function frame_path(d)
  local parts = {}
  for i = 1, d do
    local part = fmt('%.0f', SN[i])
    if SR[i] then
      part = part .. '[' .. count_occurrences(SS[i], ST[i], SN[i]) .. ']'
    end
    parts[i] = part
  end
  return table.concat(parts, '.')
end

local function fail(fr, known, number, why)
  local path = frame_path(fr)
  if known then
    if path ~= '' then path = path .. '.' end
    invalid_msg = fmt("field '%s%.0f' (%.0f): %s", path, number, number, why)
  elseif number ~= 0 then
    invalid_msg = fmt('%s%sfield %.0f: %s', path, path ~= '' and ': ' or '', number, why)
  else
    invalid_msg = path .. (path ~= '' and ': ' or '') .. why
  end
  error(INVALID)
end

-- ---- the walk -------------------------------------------------------------------------------

local missing_required = false
local missing_path = '?'
local vpos = nil

local function check_required(msg, node, fr)
  for _, r in ipairs(msg.req) do
    if not node[r] then
      if not missing_required then
        missing_required = true
        local path = frame_path(fr)
        missing_path = (path ~= '' and path .. '.' or '') .. fmt('%.0f', r)
      end
      return
    end
  end
end

-- `node` tracks required-field presence like upb: one table per message instance, a singular
-- message field of an instance merges all its occurrences into one child instance.
local function child_node(node, number, repeated)
  if repeated then return {} end
  local child = node[-number]
  if not child then
    child = {}
    node[-number] = child
  end
  return child
end

local function walk(mi, p, e, depth, gnum, node)
  local msg = M[mi]
  local fr = depth
  local start = p
  while p < e do
    local tag_at = p
    local tag = byte(s, p)
    if tag < 128 then
      p = p + 1
    else
      local q
      tag, q = rv(p, e)
      if not tag then fail(fr, false, 0, 'malformed tag') end
      if q - p > 5 then fail(fr, false, 0, 'malformed tag (over 5 bytes)') end
      p = q
    end
    if tag > 4294967295 then fail(fr, false, 0, 'tag out of range') end
    local wt = tag % 8
    local number = (tag - wt) / 8
    if number == 0 then fail(fr, false, 0, 'field number 0') end
    if wt == 4 then
      if gnum ~= 0 and number == gnum then
        if node then check_required(msg, node, fr) end
        return p
      end
      fail(fr, false, number, 'unmatched end-group')
    end
    if wt > 5 then fail(fr, false, number, 'invalid wire type') end

    local f = msg[number]
    if not f then
      if not allow_unknown then fail(fr, false, number, 'unknown field') end
      p = skip(p, e, number, wt, depth, max_depth)
      if not p then fail(fr, false, number, 'malformed value') end
    else
      local want, kind = f[1], f[2]
      local packed = wt == 2 and want ~= 2 and want ~= 3 and f[3]
      if wt ~= want and not packed then
        fail(fr, true, number, fmt('wire type %d, expected %d', wt, want))
      end
      if node then node[number] = true end
      if wt == 0 then
        local v, q = p < e and byte(s, p), p + 1
        if not v or v > 127 then
          v, q = rv(p, e)
          if not v then fail(fr, true, number, 'malformed varint') end
        end
        if kind == 'e' and not E[f[4]][rv_int32(p)] then
          fail(fr, true, number, 'value is not in the enum')
        end
        if depth == 0 and number == VF then vpos = p end
        p = q
      elseif wt == 1 or wt == 5 then
        local unit = wt == 5 and 4 or 8
        if e - p < unit then fail(fr, true, number, 'truncated') end
        if depth == 0 and number == VF then vpos = p end
        p = p + unit
      elseif wt == 2 then
        local len, q = p < e and byte(s, p), p + 1
        if not len or len > 127 then
          len, q = rv(p, e)
          if not len or q - p > 5 then fail(fr, true, number, 'malformed length') end
        end
        if len > e - q then fail(fr, true, number, 'length runs past the end') end
        local vend = q + len
        if packed then
          if want == 5 or want == 1 then
            if len % (want == 5 and 4 or 8) ~= 0 then
              fail(fr, true, number, 'packed length is not a multiple of the element size')
            end
          else
            local x = q
            local enum = kind == 'e' and E[f[4]]
            while x < vend do
              local at = x
              local v
              v, x = rv(x, vend)
              if not v then fail(fr, true, number, 'malformed varint in packed field') end
              if enum and not enum[rv_int32(at)] then
                fail(fr, true, number, 'value is not in the enum')
              end
            end
          end
        elseif kind == 's' then
          if not utf8_ok(q, vend) then fail(fr, true, number, 'invalid UTF-8') end
        elseif kind == 'm' then
          if depth + 1 > max_depth then
            fail(fr, true, number, fmt('nesting deeper than %d levels', max_depth))
          end
          local child = node and child_node(node, number, f[3])
          local d = depth + 1
          SN[d], SR[d], SS[d], ST[d] = number, f[3], start, tag_at
          walk(f[4], q, vend, d, 0, child)
        end
        p = vend
      else -- wt == 3: a group
        if depth + 1 > max_depth then
          fail(fr, true, number, fmt('nesting deeper than %d levels', max_depth))
        end
        local child = node and child_node(node, number, f[3])
        local d = depth + 1
        SN[d], SR[d], SS[d], ST[d] = number, f[3], start, tag_at
        p = walk(f[4], p, e, d, number, child)
      end
    end
  end
  if gnum ~= 0 then fail(fr, false, gnum, 'group is not closed') end
  if node then check_required(msg, node, fr) end
  return p
end

local walked, why = pcall(walk, 1, 1, n + 1, 0, 0, any_required and {} or nil)
if not walked then
  if why == INVALID then return err('CTXINVALID', invalid_msg) end
  error(why)
end
if missing_required then
  return err('CTXINVALID', "field '" .. missing_path .. "': required field is missing")
end

-- ---- the version field ----------------------------------------------------------------------

local want_version = expected + 1
local lo, hi = 0, 0
if vpos then
  if VK == 'fixed32' or VK == 'sfixed32' then
    lo = le(vpos, 4)
  elseif VK == 'fixed64' or VK == 'sfixed64' then
    lo, hi = le(vpos, 4), le(vpos + 4, 4)
  else
    lo, hi = rv_split(vpos)
  end
end

local value, in_range = nil, true -- value nil: a number too large for a double to be exact
if VK == 'int32' or VK == 'sfixed32' then
  value = lo >= TWO31 and lo - TWO32 or lo
elseif VK == 'uint32' or VK == 'fixed32' then
  value = lo
elseif VK == 'sint32' then
  value = lo % 2 == 0 and lo / 2 or -(lo + 1) / 2
elseif VK == 'uint64' or VK == 'fixed64' then
  if hi >= TWO31 then in_range = false elseif hi < 2097152 then value = hi * TWO32 + lo end
elseif VK == 'int64' or VK == 'sfixed64' then
  if hi >= TWO31 then
    value = -((TWO32 - 1 - hi) * TWO32 + (TWO32 - lo))
    if hi < TWO32 - 2097152 then value = nil end
  elseif hi < 2097152 then
    value = hi * TWO32 + lo
  end
elseif VK == 'sint64' then
  if hi < 2097152 then
    local z = hi * TWO32 + lo
    value = z % 2 == 0 and z / 2 or -(z + 1) / 2
  end
end

if not in_range then
  return err('CTXVERSION', fmt('payload version is out of range, expected %.0f', want_version))
end
if value ~= want_version then
  local shown = value and fmt('%.0f', value) or 'out of the exact range'
  return err('CTXVERSION', fmt('payload version is %s, expected %.0f', shown, want_version))
end

-- ---- the write ------------------------------------------------------------------------------

local t = redis.call('TIME')
local ms = fmt('%.0f', tonumber(t[1]) * 1000 + floor(tonumber(t[2]) / 1000))
local vs = fmt('%.0f', want_version)
redis.call('HSET', ckey, 'raw', payload, 'version', vs, 'schema', name,
  'updated_ms', ms, 'updated_by', by)
return want_version
