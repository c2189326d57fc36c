--[[
  cas_fastwalk.lua - part of cas.lua (included where cas.lua says "-- [include cas_fastwalk]"; not
  a script of its own): fwalk, the fast walk over a payload, and the state both walks share (vpos,
  the version field's value position; ascii, no byte above 127).

  Uses cas.lua's locals s, n, max_depth, allow_unknown, VF/VTAG and the plan's plan(), ref(),
  enum_ok(). fwalk accepts only what walk() (cas_walk.lua) accepts and returns nil when unsure.
]]

-- ---- the walk ----

local vpos = nil
local ascii = true -- no byte above 127 in s: every string is valid UTF-8

-- ---- the fast walk ----
-- fwalk accepts only payloads walk() accepts, and notes the same vpos; whatever it is not sure
-- of makes it return nil and walk() decides, with the module's error texts: a tag of three
-- bytes or more, a field not in T or K (unknown fields, packed values, groups, a wire type not
-- the field's own, sparse field numbers), a varint of 10 bytes, a length of 3 bytes or more,
-- a closed-enum value of two bytes or more or not in the enum, nesting at max_depth, a string
-- with a byte above 127 (ASCII is valid UTF-8; walk() checks the rest). It runs only when no
-- required field is reachable (ANY_REQ: walk() tracks presence). The generic walk, its closures and its error
-- paths are made only when fwalk returns nil (see the validation below).
local mmax = math.max
local high_at = 0 -- the first byte above 127 at or after the last string checked (TWO32: none)
local cmi, cK, cT -- the plan fwalk read last (repeated messages)
local function fwalk(mi, p, e, d)
  local K, T, _
  if mi == cmi then
    K, T = cK, cT
  else
    K, _, _, T = plan(mi)
    cmi, cK, cT = mi, K, T
  end
  while p < e do
    local t, b = byte(s, p, p + 1)
    if t < 128 then
      p = p + 1
    else -- a two-byte tag
      if not b or b > 127 then return nil end
      t = t + b * 128 - 128
      p = p + 2
      b = byte(s, p)
    end
    -- every value has at least one byte; b is the first
    if not b or p >= e then return nil end
    local c
    if t < 128 then
      c = byte(T, t + 1)
    else -- a two-byte tag: K's code when the wire type is the field's own (as T has it)
      local wt = t % 8
      c = byte(K, (t - wt) / 8)
      if c then
        if c < 97 then c = c + 32 end
        if wt ~= (c < 99 and 0 or c == 99 and 1 or c < 103 and 2 or c == 103 and 3 or 5) then
          c = nil
        end
      end
    end
    if c == 97 then -- varint
      if d == 0 and t == VTAG then vpos = p end
      if b < 128 then
        p = p + 1
      else -- at most 9 bytes: a valid varint; its next three bytes read with one call
        local b2, b3, b4 = byte(s, p + 1, p + 3)
        local q
        if b2 and b2 < 128 then
          q = p + 2
        elseif b3 and b3 < 128 then
          q = p + 3
        elseif b4 and b4 < 128 then
          q = p + 4
        else
          q = p + 4
          repeat
            if q >= e or q - p > 8 then return nil end
            b = byte(s, q)
            q = q + 1
          until b < 128
        end
        if q > e then return nil end -- its last byte is past the message
        p = q
      end
    elseif c == 101 or c == 100 or c == 102 then -- string (ASCII), bytes, message
      local q = p + 1
      if b > 127 then -- a two-byte length
        local b2 = byte(s, q)
        if not b2 or b2 > 127 then return nil end
        b = b + b2 * 128 - 128
        q = q + 1
      end
      if b > e - q then return nil end
      if c == 101 then
        if b > 48 then
          if high_at < q then high_at = find(s, '[\128-\255]', q) or TWO32 end
          if high_at < q + b then return nil end
        elseif b > 0 and mmax(byte(s, q, q + b - 1)) > 127 then
          return nil
        end
      end
      if c == 102 and (d + 1 > max_depth or not fwalk(ref(mi, (t - 2) / 8), q, q + b, d + 1)) then
        return nil
      end
      p = q + b
    elseif c == 99 or c == 104 then -- fixed64, fixed32
      local unit = c == 99 and 8 or 4
      if e - p < unit then return nil end
      if d == 0 and t == VTAG then vpos = p end
      p = p + unit
    elseif c == 98 then -- closed enum: a one-byte value
      if b > 127 or not enum_ok(ref(mi, t / 8), b) then return nil end
      p = p + 1
    else
      return nil
    end
  end
  return true
end
