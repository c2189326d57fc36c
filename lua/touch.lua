#!lua flags=allow-oom
--[[
  touch.lua - CTX.TOUCH for servers without the module (docs/PROTOCOL.md, "Lua engine").
  Runs after prelude.lua (read_ctx, touch_ms, wrongtype).

  Shebang (Redis 7.0+, script flags): a write (PEXPIRE) that needs no memory, so it runs under
  maxmemory like CTX.TOUCH (write fast, not deny-oom): allow-oom.

  KEYS[1]  the context key
  ARGV[1]  milliseconds: decimal integer 1 .. 10^15, the key's new time to live

  Replies:
    0          the key does not exist
    1          the context's expiry was set (PEXPIRE; replicated as its effect)
  Errors:
    ERR        milliseconds is not an integer from 1 to 1000000000000000
    WRONGTYPE  the key exists and is not a context (v3 / v2 string or v1 hash)
]]

local ms, e = touch_ms(ARGV[1], 'milliseconds')
if e then return e end
local v = read_ctx(KEYS[1])
if v == nil then return 0 end
if v == false then return wrongtype() end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
