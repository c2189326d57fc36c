--[[
  cas_walk.lua - part of cas.lua (included in the block that runs when fwalk is not sure; not a
  script of its own): walk(), the validation walk of module/core/ctx_validate.c with its exact
  error texts, its closures and error paths, made only when needed. Replies CTXINVALID / CTXTOOBIG
  on failure; on success leaves vpos where the version field's value is.
]]

  vpos = nil
  -- no byte above 127: every string is valid UTF-8 (max of the bytes: one call, up to Lua's C
  -- stack of 8000 values; a pattern scan beyond)
  if n == 0 then
    ascii = true
  elseif n <= 7000 then
    ascii = math.max(byte(s, 1, n)) < 128
  else
    ascii = not find(s, '[\128-\255]')
  end


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

  -- Made only when needed (creating a closure costs on every call): utf8_ok when the payload has
  -- a byte above 127, skip for unknown fields (allowed) and error paths.
  local utf8_ok, skip

  local function need_skip()
    if skip then return end
    -- Skips one value of wire type wt whose tag was just read; groups nest, bounded by max_d.
    local function sk(p, e, number, wt, depth, max_d)
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
          p = sk(p, e, num, w, depth + 1, max_d)
          if not p then return nil end
        end
        return nil
      end
      return nil
    end
    skip = sk
  end

  -- ---- error paths ----
  -- The walk only records what failed (fail_*, missing_*); the texts are made after it.

  local INVALID = '\0ctxinvalid' -- what fail() raises (pcall returns it)
  local fail_d, fail_mi, fail_n, fail_why
  local missing_num, missing_name, missing_d, missing_P

  -- The path to the message at depth d: level i (1..d) was entered through field P[5i - 4] of
  -- message P[5i - 3] (repeated: P[5i - 2]) whose tag is at P[5i] in a parent message starting at
  -- P[5i - 1]. The walk fills P on the way down: one table per call, nothing per nested message.
  local P = {}

  -- fmi: the message of field `number` when the schema knows the field (then it is named).
  local function fail(d, fmi, number, why)
    fail_d, fail_mi, fail_n, fail_why = d, fmi, number, why
    error(INVALID, 0)
  end


  -- At the end of an occurrence of message mi: its first missing required field, if any, is
  -- noted with a copy of the path (the first one found in the walk wins; structural errors found
  -- later still win).
  local function check_required(mi, node, d)
    if missing_num then return end
    local num, fname = missing_req(mi, node)
    if num then
      missing_num, missing_name, missing_d, missing_P = num, fname, d, {}
      for i = 1, 5 * d do missing_P[i] = P[i] end
    end
  end

  -- mi: the message (plan index); [p, e): its bytes; gnum: the group's number (0: not a group).
  -- `node` tracks required-field presence like upb: one table per message instance, a singular
  -- message field of an instance merges all its occurrences into one child instance.
  -- Entering a nested message or group of field `number` (its tag at tag_at, in a message that
  -- starts at `start`): the depth limit, the frame the error path reads, and the presence record
  -- (upb's: a repeated field's occurrences are instances of their own, a singular field's merge).
  local function enter(depth, mi, number, rep, start, tag_at, node)
    if depth + 1 > max_depth then
      fail(depth, mi, number, fmt('nesting deeper than %d levels', max_depth))
    end
    local child = nil
    if node then
      child = not rep and node[-number]
      if not child then
        child = {}
        if not rep then node[-number] = child end
      end
    end
    local j = 5 * depth + 5
    P[j - 4], P[j - 3], P[j - 2], P[j - 1], P[j] = number, mi, rep, start, tag_at
    return child
  end

  local function walk(mi, p, e, depth, gnum, node)
    local K, _, SPARSE = plan(mi)
    local start = p
    while p < e do
      local tag_at = p
      local tag = byte(s, p)
      if tag < 128 then
        p = p + 1
      else
        local q
        tag, q = rv(p, e)
        if not tag or q - p > 5 then fail(depth, nil, 0, 'malformed tag') end
        p = q
      end
      if tag > 4294967295 then fail(depth, nil, 0, 'tag out of range') end
      local wt = tag % 8
      local number = (tag - wt) / 8
      if number == 0 then fail(depth, nil, 0, 'field number 0') end
      if wt == 4 then
        if gnum ~= 0 and number == gnum then
          if node then check_required(mi, node, depth) end
          return p
        end
        fail(depth, nil, number, 'unmatched end-group')
      end
      if wt > 5 then fail(depth, nil, number, 'invalid wire type') end

      local c = byte(K, number)
      if not c and SPARSE then
        local _, N = plan(mi)
        c = match(N, ' ' .. number .. ':(.)')
        c = c and byte(c)
      end
      if not c or c == 46 then
        if not allow_unknown then fail(depth, nil, number, 'unknown field') end
        p = skip(p, e, number, wt, depth, max_depth)
        if not p then fail(depth, nil, number, 'malformed value') end
      else
        -- c: 'a' varint 'b' enum 'c' fixed64 'd' bytes 'e' string 'f' message 'g' group
        -- 'h' fixed32 (ctx_luaplan.c); uppercase: repeated
        local rep = c < 97
        if rep then c = c + 32 end
        local want = c < 99 and 0 or c == 99 and 1 or c < 103 and 2 or c == 103 and 3 or 5
        local packed = wt == 2 and rep and (c < 100 or c == 104)
        if wt ~= want and not packed then
          fail(depth, mi, number, fmt('wire type %d, expected %d', wt, want))
        end
        if node then node[number] = true end
        if wt == 0 then
          local v, q = p < e and byte(s, p), p + 1
          if not v or v > 127 then
            v, q = rv(p, e)
            if not v then fail(depth, mi, number, 'malformed varint') end
          end
          if c == 98 and not enum_ok(ref(mi, number), rv_int32(p)) then
            fail(depth, mi, number, 'value is not in the enum')
          end
          if depth == 0 and number == VF then vpos = p end
          p = q
        elseif wt == 1 or wt == 5 then
          local unit = wt == 5 and 4 or 8
          if e - p < unit then fail(depth, mi, number, 'truncated') end
          if depth == 0 and number == VF then vpos = p end
          p = p + unit
        elseif wt == 2 then
          local len, q = p < e and byte(s, p), p + 1
          if not len or len > 127 then
            len, q = rv(p, e)
            if not len or q - p > 5 then fail(depth, mi, number, 'malformed length') end
          end
          if len > e - q then fail(depth, mi, number, 'length runs past the end') end
          local vend = q + len
          if packed then
            if want ~= 0 then
              if len % (want == 5 and 4 or 8) ~= 0 then
                fail(depth, mi, number, 'packed length is not a multiple of the element size')
              end
            else
              local x = q
              local ei = c == 98 and ref(mi, number)
              while x < vend do
                local at = x
                local v
                v, x = rv(x, vend)
                if not v then fail(depth, mi, number, 'malformed varint in packed field') end
                if ei and not enum_ok(ei, rv_int32(at)) then
                  fail(depth, mi, number, 'value is not in the enum')
                end
              end
            end
          elseif c == 101 then
            if not ascii and not utf8_ok(q, vend) then fail(depth, mi, number, 'invalid UTF-8') end
          elseif c == 102 then
            walk(ref(mi, number), q, vend, depth + 1, 0,
              enter(depth, mi, number, rep, start, tag_at, node))
          end
          p = vend
        else -- wt == 3: a group
          p = walk(ref(mi, number), p, e, depth + 1, number,
            enter(depth, mi, number, rep, start, tag_at, node))
        end
      end
    end
    if gnum ~= 0 then fail(depth, nil, gnum, 'group is not closed') end
    if node then check_required(mi, node, depth) end
    return p
  end

  if not ascii then
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

    utf8_ok = function(p, e)
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
  end
  if allow_unknown then need_skip() end
  local walked, why = pcall(walk, 1, 1, n + 1, 0, 0, ANY_REQ and {} or nil)
  if not walked and why ~= INVALID then error(why) end
  if not walked or missing_num then
    need_skip()
    local function name_of(mi, number)
      local _, N = plan(mi)
      return match(N, ' ' .. number .. ':.([^ ]*)')
    end
    -- as ctx_validate.c: the path in a 160-byte buffer (159 bytes kept), the text in 256 (255)
    local function path_of(d, PP)
      local parts = {}
      for i = 1, d do
        local j = 5 * i
        local number = PP[j - 4]
        local part = name_of(PP[j - 3], number)
        if PP[j - 2] then -- repeated: the index counts the earlier occurrences in the parent
          local c, p, stop = 0, PP[j - 1], PP[j]
          while p and p < stop do
            local t
            t, p = rv(p, stop)
            if not t then break end
            local w = t % 8
            if (t - w) / 8 == number then c = c + 1 end
            p = skip(p, stop, (t - w) / 8, w, 0, 101)
          end
          part = part .. '[' .. c .. ']'
        end
        parts[i] = part
      end
      return table.concat(parts, '.')
    end
    local msg
    if not walked then
      local path = path_of(fail_d, P)
      if fail_mi then
        if path ~= '' then path = path .. '.' end
        msg = fmt("field '%s' (%.0f): %s", sub(path .. name_of(fail_mi, fail_n), 1, 159), fail_n,
          fail_why)
      else
        path = sub(path, 1, 159)
        if fail_n ~= 0 then
          msg = fmt('%s%sfield %.0f: %s', path, path ~= '' and ': ' or '', fail_n, fail_why)
        else
          msg = path .. (path ~= '' and ': ' or '') .. fail_why
        end
      end
    else
      local path = path_of(missing_d, missing_P)
      msg = fmt("field '%s': required field is missing",
        sub((path ~= '' and path .. '.' or '') .. missing_name, 1, 159))
    end
    return err('CTXINVALID', sub(msg, 1, 255))
  end
