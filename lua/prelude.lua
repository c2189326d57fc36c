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
                            v, n, ms, schema, by, hl, val, raw (docs/PROTOCOL.md, "Storage
                            format"): a v2 string is val, its payload starts after byte hl
                            (raw nil: cut out when needed); a v1 hash has n = 0 and raw
    ctx_reply(...)          [version, raw, schema, updated_ms, updated_by] of what read_ctx read
    name_ok(name)           the schema-name rule (module/core: ctx_SchemaName_Check)
    BAD_NAME                its error text (CTX_BAD_NAME_MSG)
    registry_key(tag, name) "__ctx:schema:<name>" or, with a slot tag, "__ctx:{<tag>}:schema:<name>";
                            nil for a tag that is not 1 to 6 decimal digits
    type_of(key)            TYPE as a plain string (Redis 6.2 and 7 reply shapes)
]]

local byte, sub, find, floor, char = string.byte, string.sub, string.find, math.floor, string.char
local fmt, match = string.format, string.match
local spack, sunpack = struct.pack, struct.unpack

local WINDOW = 16
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

local function read_ctx(key)
  local got = redis.pcall('GET', key)
  if got == false then return nil end
  if type(got) == 'string' then
    -- v2: "CTX\2", version, updated_ms, records, schema length, writer length (24 bytes), then
    -- 12 bytes per window record, the schema, the writer and the payload
    local len = #got
    if len < 24 or sub(got, 1, 4) ~= 'CTX\2' then return false end
    local v, ms, n, sl, bl = sunpack('<I8I8BBI2', got, 5)
    local at = 25 + 12 * n
    local hl = at + sl + bl - 1
    -- n <= v and v < 2^63 as the module (a hand-made window longer than the history)
    if n > WINDOW or sl < 1 or sl > 128 or hl > len or v < 1 or n > v or v >= 2 ^ 63 then
      return false
    end
    return v, n, ms, sub(got, at, at + sl - 1), sub(got, at + sl, hl), hl, got, nil
  end
  -- an error reply: not a string; a v1 context is a hash
  if type_of(key) ~= 'hash' then return false end
  local h = redis.call('HMGET', key, 'version', 'raw', 'schema', 'updated_ms', 'updated_by')
  local v = strict_int(h[1] or nil)
  if not v or v < 1 then return false end
  return v, 0, strict_int(h[4] or nil) or 0, h[3] or '', h[5] or '', 0, nil, h[2] or ''
end

local function ctx_reply(v, n, ms, schema, by, hl, val, raw)
  return { v, raw or sub(val, hl + 1), schema, ms, by }
end
