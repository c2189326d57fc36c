--[[
  prelude.lua - what the Lua engine's scripts share (docs/PROTOCOL.md, "Lua engine").

  Not a script of its own: the SDK assembles every script as
      <the body's #!lua line> + prelude.lua + [the validation plan, for cas.lua] + <the body>
  with comment-only lines and the header blocks left out (ctxlink/_scripts.py, assemble()).
  Everything here is a local of the script's main chunk; it defines functions and constants and
  calls no Redis command itself.

  Defines:
    err(code, msg)          redis.error_reply('<code> <msg>')
    strict_int(s)           a decimal integer as Redis' string2ll reads it, or nil
    wrongtype()             the WRONGTYPE error of a key that is not a context
    read_ctx(key)           the context at key: nil (no key), false (not a context) or
                            v, n, ms, schema, by, hl, val, raw, fv, inc, fl, cmask, wat
                            (docs/PROTOCOL.md, "Storage format"): a v3 / v2 string is val, its
                            payload starts after byte hl (raw nil: cut out when needed); a v1
                            hash has n = 0 and raw. fv: the format (3, 2, 1); v3 only: inc the
                            8 incarnation bytes, fl the floor, cmask the clock mask; wat: where
                            the window's first record starts (v3: 8-byte records, v2: 12)
    hex(b) / unhex(h)       bytes -> lowercase hex / 16 hex digits -> 8 bytes (nil if not valid,
                            or all zero: the INC rule)
    ctx_reply(...)          [version, raw, schema, updated_ms, updated_by, incarnation] of what
                            read_ctx read (incarnation: 16 lowercase hex digits, "" for v1 / v2)
    gone(inc, given)        the CTXGONE error of a write based on incarnation `given` (bytes)
    touch_ms(s, what)       a TTL in ms (1 .. 10^15) or nil, and its error ('<what> must be ...')
    name_ok(name)           the schema-name rule (module/core: ctx_SchemaName_Check)
    BAD_NAME                its error text (CTX_BAD_NAME_MSG)
    registry_key(tag, name) "__ctx:schema:<name>" or, with a slot tag, "__ctx:{<tag>}:schema:<name>";
                            nil for a tag that is not 1 to 6 decimal digits
    type_of(key)            TYPE as a plain string (Redis 6.2 and 7 reply shapes)
]]

local byte, sub, find, floor, char = string.byte, string.sub, string.find, math.floor, string.char
local fmt, match = string.format, string.match
local spack, sunpack = struct.pack, struct.unpack

-- the write-id window (docs/PROTOCOL.md, "Storage format"): the most records a value holds and
-- the window of a schema without a WINDOW setting (the C core's CTX_WINDOW_MAX and
-- CTX_WINDOW_DEFAULT, compared by a test)
local WINDOW_MAX = 255
local WINDOW_DEFAULT = 16
local MAX_EXPECTED = 9007199254740990 -- 2^53 - 2: the largest version a double keeps exact + 1
local BAD_NAME = 'invalid schema name: 1 to 128 bytes of A-Z a-z 0-9 _ . - :'

local function err(code, msg)
  return redis.error_reply(code .. ' ' .. msg)
end

local function strict_int(s)
  -- no '+', no leading zeros, at most 20 bytes, inside int64
  if not s or #s == 0 or #s > 20 then return nil end
  if s == '0' then return 0 end
  if not find(s, '^%-?[1-9]%d*$') then return nil end
  local n = tonumber(s)
  if n >= 9223372036854775807 or n < -9223372036854775808 then return nil end
  return n
end

local function wrongtype()
  return err('WRONGTYPE', 'Operation against a key that is not a ctxlink context')
end

local function type_of(key)
  local t = redis.call('TYPE', key)
  if type(t) == 'table' then t = t.ok end
  return t
end

local function name_ok(name)
  return #name >= 1 and #name <= 128 and not find(name, '[^A-Za-z0-9_.:%-]')
end

local function registry_key(tag, name)
  if tag == '' then return '__ctx:schema:' .. name end
  if #tag <= 6 and find(tag, '^%d+$') then return '__ctx:{' .. tag .. '}:schema:' .. name end
  return nil
end

local ZERO8 = '\0\0\0\0\0\0\0\0'
local band, bor, rshift = bit.band, bit.bor, bit.rshift

-- set bits of a 31-bit mask (no loop over the bits)
local function popcount(x)
  if x == 0 then return 0 end
  x = x - band(rshift(x, 1), 0x55555555)
  x = band(x, 0x33333333) + band(rshift(x, 2), 0x33333333)
  x = band(x + rshift(x, 4), 0x0F0F0F0F)
  x = x + rshift(x, 8)
  return band(x + rshift(x, 16), 63)
end

-- (two 32-bit halves through struct: no closure, no per-byte callback)
local function hex(b)
  return fmt('%08x%08x', sunpack('>I4I4', b))
end

local function unhex(h)
  if type(h) ~= 'string' or #h ~= 16 or find(h, '[^%x]') then return nil end
  local b = spack('>I4I4', tonumber(sub(h, 1, 8), 16), tonumber(sub(h, 9, 16), 16))
  if b == ZERO8 then return nil end
  return b
end

local function read_ctx(key, got) -- got: the value (or a prefix of it) read already
  got = got or redis.pcall('GET', key)
  if got == false then return nil end
  if type(got) == 'string' then
    local len = #got
    if len < 24 then return false end
    local magic = sub(got, 1, 4)
    if magic == 'CTX\3' then
      -- v3: version, updated_ms, incarnation (8), floor, cmask, records, schema length, writer
      -- length (44 bytes), then 4 bytes per clock delta (popcount(cmask)), 8 per window record,
      -- the schema, the writer and the payload
      if len < 44 then return false end
      local v, ms, inc, fl, cmask, n, sl, bl = sunpack('<I8I8c8I8I4BBI2', got, 5)
      if n > WINDOW_MAX or sl < 1 or sl > 128 or v < 1 or n > v or v >= 2 ^ 63 or fl < 1 or fl > v
        or cmask >= 2147483648 or inc == ZERO8 then
        return false
      end
      local k = popcount(cmask)
      local wat = 45 + 4 * k
      local at = wat + 8 * n
      local hl = at + sl + bl - 1
      if hl > len then return false end
      for i = 45, wat - 1, 4 do
        local d = sunpack('<I4', got, i)
        if d < 1 or fl + d > v then return false end
      end
      return v, n, ms, sub(got, at, at + sl - 1), sub(got, at + sl, hl), hl, got, nil,
        3, inc, fl, cmask, wat
    end
    -- v2: "CTX\2", version, updated_ms, records, schema length, writer length (24 bytes), then
    -- 12 bytes per window record, the schema, the writer and the payload
    if magic ~= 'CTX\2' then return false end
    local v, ms, n, sl, bl = sunpack('<I8I8BBI2', got, 5)
    local at = 25 + 12 * n
    local hl = at + sl + bl - 1
    -- n <= v and v < 2^63 as the module (a hand-made window longer than the history)
    if n > WINDOW_MAX or sl < 1 or sl > 128 or hl > len or v < 1 or n > v or v >= 2 ^ 63 then
      return false
    end
    return v, n, ms, sub(got, at, at + sl - 1), sub(got, at + sl, hl), hl, got, nil,
      2, nil, 0, 0, 25
  end
  -- an error reply: not a string; a v1 context is a hash
  if type_of(key) ~= 'hash' then return false end
  local h = redis.call('HMGET', key, 'version', 'raw', 'schema', 'updated_ms', 'updated_by')
  local v = strict_int(h[1] or nil)
  if not v or v < 1 then return false end
  return v, 0, strict_int(h[4] or nil) or 0, h[3] or '', h[5] or '', 0, nil, h[2] or '',
    1, nil, 0, 0, 25
end

local function ctx_reply(v, n, ms, schema, by, hl, val, raw, fv, inc)
  return { v, raw or sub(val, hl + 1), schema, ms, by, inc and hex(inc) or '' }
end

local function gone(inc, given)
  return err('CTXGONE', 'the context was deleted and re-created (incarnation '
    .. (inc and hex(inc) or 'none') .. ', this write was based on ' .. hex(given) .. ')')
end

local function touch_ms(s, what)
  local ms = strict_int(s)
  if not ms or ms < 1 or ms > 1e15 then
    return nil, err('ERR', what .. ' must be an integer from 1 to 1000000000000000')
  end
  return ms
end
