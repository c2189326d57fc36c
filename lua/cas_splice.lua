--[[
  cas_splice.lua - part of cas.lua (included in its [patch] region; not a script of its own):
  CTX.PATCH's field checks (FIELDS then READS), the version bound, and the splice of the patch's
  top-level fields into the stored payload, with the new version field appended. Sets s and n to
  the merged payload and mask to the FIELDS bits. As module/core/ctx_value.c.
]]

if patching then
  local function check_field(f)
    local K, N, SPARSE = plan(1)
    local c = byte(K, f) or (SPARSE and match(N, ' ' .. f .. ':(.)'))
    if not c or c == 46 or c == '.' then
      return err('CTXFIELD', fmt("field %d is not a field of '%s'", f, TYPE))
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
  for _, f in ipairs(AL) do -- APPEND: repeated (an uppercase code), not in FIELDS
    local e = check_field(f)
    if e then return e end
    local K, N, SPARSE = plan(1)
    local c = byte(K, f) or byte(match(N, ' ' .. f .. ':(.)'))
    if c < 65 or c > 90 then
      return err('CTXFIELD', fmt('field %d is not a repeated field (APPEND)', f))
    end
    if F[f] then return err('CTXFIELD', fmt('field %d is in FIELDS and APPEND', f)) end
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
    local t = p < e and byte(str, p)
    if t and t < 128 then -- a one-byte tag
      if t < 8 then return nil end
      local wt = t % 8
      return (t - wt) / 8, wt, p + 1
    end
    local q
    t, q = sv(str, p, e)
    if not t or t >= TWO32 or t < 8 then return nil end
    local wt = t % 8
    return (t - wt) / 8, wt, q
  end
  local function sskip(str, p, e, num, wt, depth)
    local b = p < e and byte(str, p)
    if b and b < 128 then -- a one-byte varint or length
      if wt == 0 then return p + 1 end
      if wt == 2 then
        if b > e - p - 1 then return nil end
        return p + 1 + b
      end
    end
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

  -- The top level of the patch: every field in FIELDS, in the module's order (a field is
  -- checked once its tag and value parse; an unparseable rest is reported when reached).
  local p, e = 1, #payload + 1
  while p < e do
    local num, wt, q = stag(payload, p, e)
    if num and wt ~= 4 then q = sskip(payload, q, e, num, wt, 0) end
    if not num or wt == 4 or not q then
      return err('CTXINVALID', 'payload is not valid protobuf wire format')
    end
    if not F[num] and not A[num] then
      return err('CTXFIELD', fmt(#AL > 0 and 'payload holds field %d, which is not in FIELDS or APPEND'
        or 'payload holds field %d, which is not in FIELDS', num))
    end
    p = q
  end

  local function varint(x) -- x: an exact non-negative double (at most 10 bytes: no table)
    local out = ''
    while x >= 128 do
      out = out .. char(x % 128 + 128)
      x = floor(x / 128)
    end
    return out .. char(x)
  end
  local function vbytes(v)
  if VK == 'fixed32' or VK == 'sfixed32' then
    return varint(VF * 8 + 5) .. spack('<I4', v)
  elseif VK == 'fixed64' or VK == 'sfixed64' then
    return varint(VF * 8 + 1) .. spack('<I8', v)
  elseif VK == 'sint32' or VK == 'sint64' then
    return varint(VF * 8) .. varint(2 * v)
  else
    return varint(VF * 8) .. varint(v)
  end
  end

  -- An append without FIELDS to a v3 value whose payload starts with exactly the version field's
  -- bytes for cur_v: the stored payload is neither walked nor validated again, only the new
  -- elements are (docs/PROTOCOL.md, "Appends"); the write below rewrites the header and the
  -- version field in place (SETRANGE) and APPENDs the elements when the header keeps its size.
  -- (cur_cm ~= 0: a splice rebuilt the payload after the last whole write, one version field)
  -- (a root message with required fields takes the whole check, as the module's)
  if #AL > 0 and #FL == 0 and present and cur_fv == 3 and cur_cm ~= 0
    and not (ANY_REQ and missing_req(1, {})) then
    local vc, vn = vbytes(cur_v), vbytes(new_v)
    if #vc == #vn and sub(val, cur_hl + 1, cur_hl + #vc) == vc then
      tail_at, append_v = cur_hl + #vc + 1, vn
    end
  end
  if tail_at then
    n = cur_len - tail_at + 1 + #append_v + #payload
    if n > max_payload then
      return err('CTXTOOBIG', fmt('payload is %d bytes, the limit is %d', n, max_payload))
    end
    s, n = payload, #payload
  else
    full()
    -- The stored payload without the fields in FIELDS and the version field: its top-level
    -- occurrences [from, to) (a group through its end-group tag), kept runs cut out whole.
    local parts, np = {}, 0
    if #AL > 0 then np = 1 end -- with APPEND the version field goes first (filled in below)
    if present then
      cur_raw = cur_raw or sub(val, cur_hl + 1)
      local str, run = cur_raw, nil
      p, e = 1, #cur_raw + 1
      while p < e do
        -- inline (what stag and sskip return for it): a one- or two-byte tag, then a varint of
        -- up to 9 bytes, a one-byte length or a fixed-width value; anything else through them
        local num, wt, q
        local t, b, c = byte(str, p, p + 2)
        local vp = p + 1 -- the value's first byte
        if t >= 128 then -- a two-byte tag, or (0) the general path
          if b and b < 128 then t, b, vp = t - 128 + b * 128, c, p + 2 else t = 0 end
        end
        if t >= 8 and t < 16384 and b and vp < e then
          wt = t % 8
          if wt == 0 then
            if b < 128 then
              q = vp + 1
            else
              local x = vp + 1
              while x < e and x - vp < 9 do
                local y = byte(str, x)
                x = x + 1
                if y < 128 then
                  q = x
                  break
                end
              end
            end
          elseif wt == 2 then
            if b < 128 and b <= e - vp - 1 then q = vp + 1 + b end
          elseif wt == 1 then
            if e - vp >= 8 then q = vp + 8 end
          elseif wt == 5 then
            if e - vp >= 4 then q = vp + 4 end
          end
          if q then num = (t - wt) / 8 end
        end
        if not q then
          num, wt, q = stag(str, p, e)
          if num and wt ~= 4 then q = sskip(str, q, e, num, wt, 0) end
          if not num or wt == 4 or not q then
            return err('CTXINVALID', 'the stored payload is not valid protobuf wire format')
          end
        end
        if F[num] or num == VF then
          if run then
            np = np + 1
            parts[np] = sub(str, run, p - 1)
            run = nil
          end
        elseif not run then
          run = p
        end
        p = q
      end
      if run then
        np = np + 1
        parts[np] = sub(str, run, e - 1)
      end
    end
    parts[np + 1] = payload -- every occurrence of the patch, in its order: all of it
    if #AL > 0 then parts[1] = vbytes(new_v) else parts[#parts + 1] = vbytes(new_v) end

    s = table.concat(parts)
    n = #s
    if n > max_payload then
      return err('CTXTOOBIG', fmt('payload is %d bytes, the limit is %d', n, max_payload))
    end
  end
  if present then
    mask = 0
    for _, f in ipairs(FL) do mask = bor(mask, 2 ^ ((f - 1) % 31)) end
    for _, f in ipairs(AL) do mask = bor(mask, 2 ^ ((f - 1) % 31)) end
  end
end
