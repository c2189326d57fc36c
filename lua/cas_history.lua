--[[
  cas_history.lua - part of cas.lua (put in place of its "-- [include cas_history]" line, just
  before the SET; not a script of its own): the change goes to the context's history and to its
  schema's change feed (docs/PROTOCOL.md, "History" and "Change feed"). Kept small: cas.lua's
  largest plans must stay well under 32 KiB.

  Uses cas.lua's locals: hist_n / hist_payload / feed_n (the entry's `history`, `hpayload` and
  `feed`, read with its digest), present, patching, new_v, ms, by, wid, s (the stored payload),
  name, ckey, inc (the 8 incarnation bytes), px (the write's PX in ms, or nil).
  KEYS[2] is the history stream "__ctxh:<KEYS[1]>" (cluster: "__ctxh:{<slot tag>}:<KEYS[1]>"),
  passed by the SDK while the schema keeps history; the last KEYS entry is the feed
  "__ctxf:<name>", passed while the schema has a feed. Without them such a write is refused with
  "CTXSCHEMA stale <name>" (the SDK reads the entry again and re-sends with them).

  Runs before the SET, so a refused XADD or DEL (NOPERM without ~__ctxh:* / ~__ctxf:*) leaves
  nothing written (the feed's XADD comes first). One field list serves both streams: the feed's
  entry adds `v` (the version: its id is automatic) and `key`. A create drops a leftover history
  stream first; an XADD that fails (an id at or below the stream's last: a stream that outlived
  its context; a key of another type) drops the key and adds again. Then the stream takes the
  context's expiry (PTTL; time stands still while a script runs, so both expire at the same
  instant); a write with PX gives the stream that expiry.
]]

if hist_n > 0 or feed_n > 0 then
  local hk, fk = KEYS[2], '__ctxf:' .. name
  if hk == fk then hk = nil end
  if hist_n > 0 and not hk or feed_n > 0 and KEYS[#KEYS] ~= fk then return err('CTXSCHEMA', 'stale ' .. name) end
  local a = { 'XADD', fk, 'MAXLEN', '=', feed_n, '*', 'k', not present and 'create' or (patching and
    'patch' or 'update'), 'i', hex(inc), 't', fmt('%.0f', ms), 'b', by, 'w', wid or '' }
  if present and patching then
    a[#a + 1], a[#a + 2] = 'f', #AL == 0 and ARGV[12] or ARGV[12] == '' and ARGV[20] or ARGV[12] .. ' ' .. ARGV[20]
  end
  if hist_payload then a[#a + 1], a[#a + 2] = #s > 65536 and 'o' or 'p', #s > 65536 and #s or s end
  local n = #a
  if feed_n > 0 then
    a[n + 1], a[n + 2], a[n + 3], a[n + 4] = 'v', fmt('%.0f', new_v), 'key', ckey
    redis.call(unpack(a))
  end
  if hist_n > 0 then
    a[2], a[5], a[6] = hk, hist_n, fmt('%.0f-0', new_v)
    if not present then redis.call('DEL', hk) end
    if redis.pcall(unpack(a, 1, n)).err then
      redis.call('DEL', hk)
      redis.call(unpack(a, 1, n))
    end
    -- before the SET: a write's PX, or the kept expiry
    local pt = px or redis.call('PTTL', ckey)
    if tonumber(pt) > 0 and redis.call('PTTL', hk) ~= tonumber(pt) then redis.call('PEXPIRE', hk, pt) end
  end
end
