--[[
  cas_history.lua - per-context history for the Lua engine (docs/PROTOCOL.md, "History").

  Not a script: put in place of the "-- [include cas_history]" line of cas.lua and del.lua
  (ctxlink/_scripts.py). One local, the table `history`, so the main chunk stays far from Lua's
  200-locals limit. Uses the prelude's err, strict_int, type_of, fmt.

  The schema's registry entry has `history` (0..1000, 0 = off) and `hpayload` ("1": entries keep
  the payload). With history on, the script must have the history key as KEYS[2]:
  "__ctxh:<KEYS[1]>", on a cluster "__ctxh:{<slot tag>}:<KEYS[1]>"; without it the write is
  refused with "CTXSCHEMA stale <name>" (the SDK reads the entry again and re-sends with KEYS[2]).
  The entry is added before the value is SET, so a refused XADD (NOPERM without ~__ctxh:*, a key
  of another type) leaves nothing written.
]]

local history = { MAX = 1000, PAYLOAD_MAX = 65536 }

-- the entry's settings from the HMGET fields (strings or false), read as the module reads them
function history.settings(n, p)
  local h = strict_int(n or nil)
  if not h or h < 0 or h > history.MAX then h = 0 end
  return h, p == '1'
end

-- HMGET <entry> digest history hpayload: the digest as HGET gives it (a string; false when the
-- entry has none; nil when the key is not a hash), then the settings
function history.read_entry(skey)
  local h = redis.pcall('HMGET', skey, 'digest', 'history', 'hpayload')
  if h.err then return nil, 0, false end
  local n, p = history.settings(h[2], h[3])
  return h[1], n, p
end

function history.key(tag, ckey)
  if tag == '' then return '__ctxh:' .. ckey end
  return '__ctxh:{' .. tag .. '}:' .. ckey
end

-- nil, or the error reply of a write that cannot keep its history: KEYS[2] missing while the
-- schema keeps history (stale), or not the history key of KEYS[1]
function history.check(n, name, tag, ckey)
  local hkey = KEYS[2]
  if not hkey then
    if n > 0 then return err('CTXSCHEMA', 'stale ' .. name) end
    return nil
  end
  if hkey ~= history.key(tag, ckey) then
    return err('ERR', 'KEYS[2] must be the history key of KEYS[1] (__ctxh:...)')
  end
  return nil
end

local HISTORY_WRONGTYPE = 'the history key of this context holds another type (not a stream)'

-- Appends one change; nil, or an error reply (nothing written). `fields`: a list of field
-- numbers (a patch) or nil. A create drops a leftover stream first; an id at or below the
-- stream's last one (a stream that outlived its context) starts the stream again.
function history.add(n, keep_payload, create, kind, v, ms, by, wid, fields, payload, inc)
  local hkey = KEYS[2]
  if n <= 0 or not hkey then return nil end
  if create then
    local t = type_of(hkey)
    if t == 'stream' then
      redis.call('DEL', hkey)
    elseif t ~= 'none' then
      return err('WRONGTYPE', HISTORY_WRONGTYPE)
    end
  end
  local args = { 'XADD', hkey, 'MAXLEN', '=', n, fmt('%.0f', v) .. '-0', 'k', kind,
    'i', inc or '', 't', fmt('%.0f', ms), 'b', by, 'w', wid or '' }
  if fields then
    local sorted = {}
    for i, f in ipairs(fields) do sorted[i] = f end
    table.sort(sorted)
    args[#args + 1] = 'f'
    args[#args + 1] = table.concat(sorted, ' ')
  end
  if keep_payload then
    if #payload <= history.PAYLOAD_MAX then
      args[#args + 1] = 'p'
      args[#args + 1] = payload
    else
      args[#args + 1] = 'o'
      args[#args + 1] = #payload
    end
  end
  local got = redis.pcall(unpack(args))
  if type(got) == 'table' and got.err then
    if find(got.err, 'WRONGTYPE', 1, true) then return err('WRONGTYPE', HISTORY_WRONGTYPE) end
    if not find(got.err, 'equal or smaller', 1, true) then return redis.error_reply(got.err) end
    redis.call('DEL', hkey)
    redis.call(unpack(args))
  end
  return nil
end

-- After the SET: the stream takes the context's expiry. `px`: the write's TTL in ms ("" or nil:
-- none given, then the context's remaining TTL is copied when it has one and the stream's
-- differs). Time is frozen while a script runs (Redis 7), so both expire at the same instant.
function history.expire(n, ckey, px)
  local hkey = KEYS[2]
  if n <= 0 or not hkey then return end
  if px and px ~= '' then
    redis.call('PEXPIRE', hkey, px)
    return
  end
  local pt = redis.call('PTTL', ckey)
  if pt > 0 and redis.call('PTTL', hkey) ~= pt then redis.call('PEXPIRE', hkey, pt) end
end
