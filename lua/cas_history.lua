--[[
  cas_history.lua - part of cas.lua (put in place of its "-- [include cas_history]" line, just
  before the SET; not a script of its own): the change goes to the context's history
  (docs/PROTOCOL.md, "History"). Kept small: cas.lua's largest plans must stay well under 32 KiB.

  Uses cas.lua's locals: hist_n / hist_payload (the entry's `history` and `hpayload`, read with
  its digest), present, patching, new_v, ms, by, wid, s (the stored payload), name, ckey, inc
  (the 8 incarnation bytes), px (the write's PX in ms, or nil).
  KEYS[2] is the history stream "__ctxh:<KEYS[1]>" (cluster: "__ctxh:{<slot tag>}:<KEYS[1]>"),
  passed by the SDK while the schema keeps history; without it such a write is refused with
  "CTXSCHEMA stale <name>" (the SDK reads the entry again and re-sends with KEYS[2]).

  Runs before the SET, so a refused XADD or DEL (NOPERM without ~__ctxh:*) leaves nothing
  written. A create drops a leftover stream first; an XADD that fails (an id at or below the
  stream's last: a stream that outlived its context; a key of another type) drops the key and
  adds again. Then the stream takes the context's expiry (PTTL; time stands still while a
  script runs, so both expire at the same instant); a write with PX gives the stream that expiry.
]]

if KEYS[2] and hist_n > 0 then
  local hk = KEYS[2]
  if not present then redis.call('DEL', hk) end
  local a = { 'XADD', hk, 'MAXLEN', '=', hist_n, fmt('%.0f-0', new_v), 'k', not present
    and 'create' or (patching and 'patch' or 'update'), 'i', hex(inc), 't', fmt('%.0f', ms), 'b', by,
    'w', wid or '' }
  if present and patching then a[#a + 1], a[#a + 2] = 'f', ARGV[12] end
  if hist_payload then a[#a + 1], a[#a + 2] = #s > 65536 and 'o' or 'p', #s > 65536 and #s or s end
  if redis.pcall(unpack(a)).err then
    redis.call('DEL', hk)
    redis.call(unpack(a))
  end
  local pt = px or redis.call('PTTL', ckey) -- before the SET: a write's PX, or the kept expiry
  if tonumber(pt) > 0 and redis.call('PTTL', hk) ~= tonumber(pt) then redis.call('PEXPIRE', hk, pt) end
elseif hist_n > 0 then
  return err('CTXSCHEMA', 'stale ' .. name)
end
