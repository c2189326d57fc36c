#!lua
--[[
  cas.lua - CTX.CAS and CTX.PATCH for servers without the module (docs/PROTOCOL.md, "Lua engine":
  the details of every step are there).

  Shebang (Redis 7.0+): write deny-oom, like CTX.CAS: refused under maxmemory before it runs.
  One script for both commands (ARGV[10]): they share the argument checks, the key read, the
  write-id window, the schema lookup and the validation walk; scripts cannot include one another.
  Keep this file under 32 KB: Redis keeps a SCRIPT LOAD argument of 32 KB or more in the client's
  query buffer, which after a large payload on that connection stays cached with the script.

  KEYS[1]  the context key: the only key declared, the only key written
  ARGV[1]  expected_version (CAS) / base_version (PATCH): decimal, 0 .. 2^53 - 2 (Lua doubles)
  ARGV[2]  payload (PATCH: only the fields in FIELDS)
  ARGV[3]  "1" when the caller gave SCHEMA (then ARGV[8] is that schema), else "0"
  ARGV[4]  writer id for updated_by ("" for none; at most 65535 bytes)
  ARGV[5]  max_payload_bytes   ARGV[6] max_depth (root = 0)   ARGV[7] "reject" / "allow" unknown
  ARGV[8]  the schema name: SCHEMA on create, the context's schema on update ("" if unknown)
  ARGV[9]  cluster: the slot tag of KEYS[1]'s slot; "" or absent standalone
  ARGV[10] "cas" (default) or "patch"
  ARGV[11] PATCH: FIELDS numbers, decimal, one space apart, in the order given
  ARGV[12] PATCH: READS numbers, same form ("" for none)
  ARGV[13] the write id (ID), 1 to 64 bytes; absent: no id

  The registry entry is read undeclared ("__ctx:schema:<ARGV[8]>", on a cluster
  "__ctx:{<ARGV[9]>}:schema:<ARGV[8]>"): declared keys are read-write on Redis 7, and agents
  should need read access (%R~__ctx:*) only. A context is a v2 string (a v1 hash is read, with an
  empty window, and replaced by the first write); every write is SET KEYS[1] <value> KEEPTTL.

  Checks, in the module's order; the first failure replies and nothing is written:
    ERR        versions out of range, writer id over 65535 bytes, write id not 1..64 bytes,
               PATCH field numbers not in 1..536870911, repeated in FIELDS or READS, no FIELDS
    WRONGTYPE  KEYS[1] exists and is not a context
    replayed   the id's digest is in the window: ["replayed" (status), version it produced]
    conflict   nil (no context) or [version, raw, schema, updated_ms, updated_by], plus
               [oldest_known, changed] for PATCH and for a CAS with ID (changed: ascending
               field numbers of FIELDS u READS written after base_version; empty for CAS)
    CTXSCHEMA  schema required / mismatch / no schema field / invalid name / unknown /
               damaged entry; "noplan <name>" (the SDK stores a plan and retries); "schema key
               mismatch: the context uses '<name>'" (stale ARGV[8]: the SDK retries)
    CTXFIELD   PATCH: FIELDS then READS, in the order given: not a top-level field, or the
               version field; a payload field not in FIELDS
    CTXVERSION PATCH: the new version does not fit a 32-bit version field
    CTXINVALID PATCH: unparseable top level; the (merged) payload fails the walk
    CTXTOOBIG  the (merged) payload is over max_payload_bytes
    CTXVERSION CAS: the payload's version field != expected_version + 1
  Success: version + 1, updated_ms from TIME, a new window record (digest of the id or zeros;
  mask bit 31 for CAS and creates, the FIELDS bits for a patch). Reply: the new version (CAS),
  [new version, merged payload] (PATCH).

  CTXINVALID paths use field numbers (the plan has no names): "field '10[2].1' (1): ..." where
  the module says "field 'items[2].sku' (1): ...". The walk follows module/core/ctx_validate.c;
  tags and lengths over 5 bytes are rejected (as upb does after the module's walk). Known limits:
  a proto2 [default] on the version field is not in the plan (an absent field reads 0); a map
  entry without its value whose value type has required fields is not flagged; stored versions
  above 2^53 are not exact.
]]

local byte, sub, find, floor, char = string.byte, string.sub, string.find, math.floor, string.char
local fmt = string.format
local spack, sunpack = struct.pack, struct.unpack
local band, bor = bit.band, bit.bor

local TWO32 = 4294967296
local TWO31 = 2147483648
local MAX_EXPECTED = 9007199254740990
local MAX_FIELD = 536870911
local WINDOW = 16
local ZERO8 = '\0\0\0\0\0\0\0\0'
local WHOLE = TWO31 -- mask bit 31: the whole context

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

-- ---- arguments ----

local mode = ARGV[10] or 'cas'
if mode ~= 'cas' and mode ~= 'patch' then
  return err('ERR', 'mode must be cas or patch (ARGV[10])')
end
local patching = mode == 'patch'
local expected = strict_int(ARGV[1])
if not expected or expected < 0 or expected > MAX_EXPECTED then
  return err('ERR', (patching and 'base_version' or 'expected_version')
    .. ' must be an integer from 0 to ' .. fmt('%.0f', MAX_EXPECTED))
end

-- FIELDS / READS: numbers as given; F and R are sets, U = F u R ascending
local FL, RL, F, R = {}, {}, {}, {}
local function parse_fields(text, list, set, what)
  -- as the module: every number in range first, then the first repeat in argument order
  for word in string.gmatch(text or '', '[^ ]+') do
    local f = strict_int(word)
    if not f or f < 1 or f > MAX_FIELD then
      return err('ERR', 'field numbers must be integers from 1 to ' .. MAX_FIELD)
    end
    list[#list + 1] = f
  end
  for _, f in ipairs(list) do
    if set[f] then return err('ERR', fmt('field %d is listed twice in %s', f, what)) end
    set[f] = true
  end
end
if patching then
  local e = parse_fields(ARGV[11], FL, F, 'FIELDS')
  if e then return e end
  if #FL == 0 then
    return err('ERR', 'FIELDS needs a count from 1 to the field numbers that follow')
  end
  e = parse_fields(ARGV[12], RL, R, 'READS')
  if e then return e end
end

local payload = ARGV[2]
local given = ARGV[3] == '1'
local by = ARGV[4] or ''
if #by > 65535 then return err('ERR', 'writer id is longer than 65535 bytes') end
local max_payload = tonumber(ARGV[5]) or 1048576
local max_depth = tonumber(ARGV[6]) or 32
local allow_unknown = ARGV[7] == 'allow'
local ckey = KEYS[1]
local name = ARGV[8] or ''
local tag = ARGV[9] or ''
local wid = ARGV[13]
if wid and (#wid < 1 or #wid > 64) then return err('ERR', 'write id must be 1 to 64 bytes') end

-- ---- the stored context ----
-- cur_* describe it: absent (cur_v = 0), a v1 hash (no window) or a v2 string.

local function wrongtype()
  return err('WRONGTYPE', 'Operation against a key that is not a ctxlink context')
end

local cur_v, cur_n, cur_schema, cur_ms, cur_by, cur_raw, cur_hl = 0, 0, nil, 0, '', '', 0
local val = nil -- the v2 value string, when the key holds one
local present = false
local got = redis.pcall('GET', ckey)
if type(got) == 'string' then
  -- v2: the type rule of docs/PROTOCOL.md, "Storage format"
  local len = #got
  if len < 24 or sub(got, 1, 4) ~= 'CTX\2' then return wrongtype() end
  local v, ms, nrec, sl, bl = sunpack('<I8I8BBI2', got, 5)
  local hl = 24 + 12 * nrec + sl + bl
  -- nrec <= v, v < 2^63: else version - i and oldest_known would leave 1 .. v
  if nrec > WINDOW or sl < 1 or sl > 128 or hl > len or v < 1 or nrec > v or v >= 2 ^ 63 then
    return wrongtype()
  end
  present, val = true, got
  cur_v, cur_n, cur_ms = v, nrec, ms
  local at = 25 + 12 * nrec
  cur_schema = sub(got, at, at + sl - 1)
  cur_by = sub(got, at + sl, hl)
  cur_raw = nil -- the payload, cut out only when needed (a conflict, a patch)
  cur_hl = hl
elseif got then
  -- an error reply: not a string; a v1 context is a hash
  local t = redis.call('TYPE', ckey)
  if type(t) == 'table' then t = t.ok end
  if t ~= 'hash' then return wrongtype() end
  local h = redis.call('HMGET', ckey, 'version', 'raw', 'schema', 'updated_ms', 'updated_by')
  local v = strict_int(h[1] or nil)
  if not v or v < 1 then return wrongtype() end
  present = true
  cur_v, cur_raw, cur_schema = v, h[2] or '', h[3] or nil
  if cur_schema == '' then cur_schema = nil end -- as the module: an empty field is no schema
  cur_ms, cur_by = strict_int(h[4] or nil) or 0, h[5] or ''
end

-- ---- replay ----

local digest = ZERO8
if wid then
  local hex = redis.sha1hex(wid)
  digest = char(tonumber(sub(hex, 1, 2), 16), tonumber(sub(hex, 3, 4), 16),
    tonumber(sub(hex, 5, 6), 16), tonumber(sub(hex, 7, 8), 16), tonumber(sub(hex, 9, 10), 16),
    tonumber(sub(hex, 11, 12), 16), tonumber(sub(hex, 13, 14), 16),
    tonumber(sub(hex, 15, 16), 16))
  if digest ~= ZERO8 and cur_n > 0 then
    -- a plain find over the records; a hit counts only at a record's start
    local last, at = 13 + 12 * cur_n, 25
    while true do
      at = find(val, digest, at, true)
      if not at or at > last then break end
      if (at - 25) % 12 == 0 then
        return { redis.status_reply('replayed'), cur_v - (at - 25) / 12 }
      end
      at = at + 1
    end
  end
end

-- ---- conflict ----

local function conflict(changed)
  cur_raw = cur_raw or sub(val, cur_hl + 1)
  if not wid and not patching then return { cur_v, cur_raw, cur_schema or '', cur_ms, cur_by } end
  return { cur_v, cur_raw, cur_schema or '', cur_ms, cur_by, cur_v - cur_n + 1, changed }
end

if not patching then
  if cur_v ~= expected then
    if not present then return false end
    return conflict({})
  end
elseif not present then
  if expected ~= 0 then return false end
elseif expected ~= cur_v then
  local U = {}
  for _, f in ipairs(FL) do U[#U + 1] = f end
  for _, f in ipairs(RL) do if not F[f] then U[#U + 1] = f end end
  table.sort(U)
  local oldest = cur_v - cur_n + 1
  if expected > cur_v or expected < oldest - 1 then return conflict(U) end
  local whole, mask = false, 0
  for i = 0, cur_v - expected - 1 do
    local m = sunpack('<I4', val, 33 + 12 * i)
    if m >= WHOLE then whole = true end
    mask = bor(mask, m % WHOLE)
  end
  if whole then return conflict(U) end
  local changed = {}
  for _, f in ipairs(U) do
    if band(mask, 2 ^ ((f - 1) % 31)) ~= 0 then changed[#changed + 1] = f end
  end
  if #changed > 0 then return conflict(changed) end
end

-- ---- schema ----

if not present then
  if not given then return err('CTXSCHEMA', 'schema required to create a context') end
else
  if not cur_schema then
    return err('CTXSCHEMA', 'the context has no schema field')
  end
  if cur_schema ~= name then
    if given then
      return err('CTXSCHEMA', fmt("schema mismatch: the context uses '%s', not '%s'",
        sub(cur_schema, 1, 120), sub(name, 1, 120)))
    end
    return err('CTXSCHEMA', fmt("schema key mismatch: the context uses '%s'",
      sub(cur_schema, 1, 128)))
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
elseif #tag <= 6 and find(tag, '^%d+$') then
  skey = '__ctx:{' .. tag .. '}:schema:' .. name
else
  return err('ERR', 'slot tag must be a decimal integer (ARGV[9])')
end

local entry = redis.pcall('HMGET', skey, 'digest', 'plan', 'type', 'fds', 'vfield')
if entry.err then entry = {} end
local digest_hex, plan_json = entry[1] or nil, entry[2] or nil
local etype, efds, evfield = entry[3] or nil, entry[4] or nil, entry[5] or nil
if not digest_hex and not plan_json and not etype and not efds and not evfield then
  local t = redis.call('TYPE', skey) -- no field at all: is there an (empty-handed) entry?
  if type(t) == 'table' then t = t.ok end
  if t ~= 'hash' then return err('CTXSCHEMA', fmt("unknown schema '%s'", sub(name, 1, 120))) end
end
-- As the module: an entry whose digest is not the digest of its content was edited by hand.
if not etype or not efds or not evfield or not digest_hex
    or digest_hex ~= redis.sha1hex(#etype .. ':' .. etype .. #evfield .. ':' .. evfield
      .. efds) then
  return err('CTXSCHEMA', fmt("registry entry for schema '%s' is damaged (edited outside "
    .. "CTX.SCHEMA.SET?); register the schema again", sub(name, 1, 120)))
end
if not plan_json then return err('CTXSCHEMA', 'noplan ' .. name) end
local ok, plan = pcall(cjson.decode, plan_json)
if not ok or type(plan) ~= 'table' or plan.v ~= 1 or plan.digest ~= digest_hex then
  return err('CTXSCHEMA', 'noplan ' .. name)
end

-- ---- size (CTX.CAS; a patch checks its merged payload) ----

local n = #payload
if not patching and n > max_payload then
  return err('CTXTOOBIG', fmt('payload is %d bytes, the limit is %d', n, max_payload))
end

-- ---- the plan, as lookup tables ----
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

-- ---- wire primitives ----
-- Positions are 1-based; a range is [p, e) (e is one past the last byte).

local s = payload -- the bytes rv/skip/walk read (a patch points it at each input in turn)

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

-- ---- error paths ----

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

-- ---- the walk ----

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

-- ---- CTX.PATCH: the fields and the splice ----

local new_v = cur_v + 1 -- CTX.CAS got here with cur_v == expected
local mask = WHOLE
if patching then
  local root = M[1]
  local function check_field(f)
    if not root[f] then
      return err('CTXFIELD', fmt("field %d is not a field of '%s'", f, etype))
    end
    if f == VF then return err('CTXFIELD', fmt('field %d is the version field', f)) end
  end
  for _, f in ipairs(FL) do
    local e = check_field(f)
    if e then return e end
  end
  for _, f in ipairs(RL) do
    local e = check_field(f)
    if e then return e end
  end
  -- the largest version the field's type holds (the module's ctx_VersionField.max)
  local vmax = (VK == 'int32' or VK == 'sint32' or VK == 'sfixed32') and 2147483647
    or (VK == 'uint32' or VK == 'fixed32') and 4294967295 or nil
  if vmax and new_v > vmax then
    return err('CTXVERSION', fmt('version %.0f does not fit the version field', new_v))
  end
  -- A stale base can reach a context at 2^53 (CAS cannot): 2^53 + 1 rounds to 2^53, the
  -- version would not move. Refused rather than written twice.
  if cur_v >= 2 ^ 53 then
    return err('CTXVERSION', 'the next version is above 2^53, beyond the Lua engine (doubles)')
  end

  -- The splice reads the top level as module/core/ctx_value.c does (its error texts depend on
  -- it): varints of up to 10 bytes (bits above 63 dropped), tags below 2^32 with a field number
  -- >= 1, groups nested at most 100 deep; the walk on the merged payload is the strict check.
  local function sv(str, p, e)
    local v, mul = 0, 1
    for i = 0, 9 do
      if p >= e then return nil end
      local b = byte(str, p)
      p = p + 1
      if i == 9 then -- as read_varint: a 10th byte with its continuation bit is malformed
        if b >= 128 then return nil end
        b = b % 2
      end
      if b < 128 then return v + b * mul, p end
      v = v + (b - 128) * mul
      mul = mul * 128
    end
    return nil
  end
  local function stag(str, p, e)
    local t, q = sv(str, p, e)
    if not t or t >= TWO32 or t < 8 then return nil end
    local wt = t % 8
    return (t - wt) / 8, wt, q
  end
  local function sskip(str, p, e, num, wt, depth)
    if wt == 0 then
      local _, q = sv(str, p, e)
      return q
    elseif wt == 1 then
      if e - p < 8 then return nil end
      return p + 8
    elseif wt == 5 then
      if e - p < 4 then return nil end
      return p + 4
    elseif wt == 2 then
      local len, q = sv(str, p, e)
      if not len or len > e - q then return nil end
      return q + len
    elseif wt == 3 then
      if depth >= 100 then return nil end
      while true do
        local n2, w, q = stag(str, p, e)
        if not n2 then return nil end
        if w == 4 then
          if n2 == num then return q end
          return nil
        end
        p = sskip(str, q, e, n2, w, depth + 1)
        if not p then return nil end
      end
    end
    return nil
  end

  -- Visits the top-level field occurrences of str: visit(number, from, to) for the bytes
  -- [from, to) (tag through the end of the value; a group through its end-group tag). Returns
  -- what visit returned to stop, false for unparseable structure, true at the end.
  local function top_fields(str, visit)
    local p, e = 1, #str + 1
    while p < e do
      local num, wt, q = stag(str, p, e)
      if not num or wt == 4 then return false end
      local r = sskip(str, q, e, num, wt, 0)
      if not r then return false end
      local stop = visit(num, p, r)
      if stop then return stop end
      p = r
    end
    return true
  end

  local res = top_fields(payload, function(num)
    if not F[num] then
      return err('CTXFIELD', fmt('payload holds field %d, which is not in FIELDS', num))
    end
  end)
  if res == false then return err('CTXINVALID', 'payload is not valid protobuf wire format') end
  if res ~= true then return res end

  local parts = {}
  if present then
    cur_raw = cur_raw or sub(val, cur_hl + 1)
    res = top_fields(cur_raw, function(num, p, r)
      if not F[num] and num ~= VF then parts[#parts + 1] = sub(cur_raw, p, r - 1) end
    end)
    if res == false then
      return err('CTXINVALID', 'the stored payload is not valid protobuf wire format')
    end
  end
  parts[#parts + 1] = payload -- every occurrence of the patch, in its order: all of it

  local function varint(x) -- x: an exact non-negative double
    local out = {}
    while x >= 128 do
      out[#out + 1] = char(x % 128 + 128)
      x = floor(x / 128)
    end
    out[#out + 1] = char(x)
    return table.concat(out)
  end
  if VK == 'fixed32' or VK == 'sfixed32' then
    parts[#parts + 1] = varint(VF * 8 + 5) .. spack('<I4', new_v)
  elseif VK == 'fixed64' or VK == 'sfixed64' then
    parts[#parts + 1] = varint(VF * 8 + 1) .. spack('<I8', new_v)
  elseif VK == 'sint32' or VK == 'sint64' then
    parts[#parts + 1] = varint(VF * 8) .. varint(2 * new_v)
  else
    parts[#parts + 1] = varint(VF * 8) .. varint(new_v)
  end
  s = table.concat(parts)
  n = #s
  if n > max_payload then
    return err('CTXTOOBIG', fmt('payload is %d bytes, the limit is %d', n, max_payload))
  end
  if present then
    mask = 0
    for _, f in ipairs(FL) do mask = bor(mask, 2 ^ ((f - 1) % 31)) end
  end
end

-- ---- validation of the payload (CTX.PATCH: the merged payload) ----

local walked, why = pcall(walk, 1, 1, n + 1, 0, 0, any_required and {} or nil)
if not walked then
  if why == INVALID then return err('CTXINVALID', invalid_msg) end
  error(why)
end
if missing_required then
  return err('CTXINVALID', "field '" .. missing_path .. "': required field is missing")
end

-- ---- the version field (CTX.CAS) ----

if not patching then
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
end

-- ---- the write ----
-- The new record first, then the newest 15 of the old ones; the schema is the checked name.

local t = redis.call('TIME')
local ms = tonumber(t[1]) * 1000 + floor(tonumber(t[2]) / 1000)
local keep = cur_n < WINDOW and cur_n or WINDOW - 1
redis.call('SET', ckey, 'CTX\2' .. spack('<I8I8BBI2', new_v, ms, keep + 1, #name, #by)
  .. digest .. spack('<I4', mask) .. (keep > 0 and sub(val, 25, 24 + 12 * keep) or '')
  .. name .. by .. s, 'KEEPTTL')
if patching then return { new_v, s } end
return new_v
