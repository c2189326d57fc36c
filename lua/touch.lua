#!lua flags=allow-oom
--[[
  touch.lua - CTX.TOUCH for servers without the module (docs/PROTOCOL.md, "Lua engine").
  Runs after prelude.lua (read_ctx, touch_ms, wrongtype).

  Shebang (Redis 7.0+, script flags): a write (PEXPIRE) that needs no memory, so it runs under
  maxmemory like CTX.TOUCH (write fast, not deny-oom): allow-oom.

  KEYS[1]  the context key
  KEYS[2]  its history stream (cas_history.lua), required when the context's schema keeps
           history (else "CTXSCHEMA stale <schema>": the SDK re-sends with it); it gets the
           same expiry
  ARGV[1]  milliseconds: decimal integer 1 .. 10^15, the key's new time to live
  ARGV[2]  cluster: the slot tag of KEYS[1]'s slot (the registry copy read); "" or absent

  Replies:
    0          the key does not exist
    1          the context's expiry was set (PEXPIRE; replicated as its effect)
  Errors:
    ERR        milliseconds is not an integer from 1 to 1000000000000000
    WRONGTYPE  the key exists and is not a context (v3 / v2 string or v1 hash)
]]

local ms, e = touch_ms(ARGV[1], 'milliseconds')
if e then return e end
local v, _, _, schema = read_ctx(KEYS[1])
if v == nil then return 0 end
if v == false then return wrongtype() end
local skey = name_ok(schema) and registry_key(ARGV[2] or '', schema)
local hist = skey and redis.pcall('HGET', skey, 'history')
hist = type(hist) == 'string' and strict_int(hist) or 0
if hist > 0 and hist <= 1000 and not KEYS[2] then return err('CTXSCHEMA', 'stale ' .. schema) end
if KEYS[2] then redis.call('PEXPIRE', KEYS[2], ARGV[1]) end -- 0 when there is no stream
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
