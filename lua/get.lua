#!lua flags=no-writes
--[[
  get.lua - CTX.GET for servers without the module (docs/PROTOCOL.md, "Lua engine").
  Runs after prelude.lua (read_ctx, ctx_reply, wrongtype).

  Shebang (Redis 7.0+, script flags): read-only, like CTX.GET (EVALSHA_RO, replicas, under OOM).

  KEYS[1]  the context key
  ARGV     none

  Replies:
    nil                                                  the key does not exist
    [version, raw, schema, updated_ms, updated_by, incarnation]
                                                         a context, storage format v3 / v2 (a
                                                         string "CTX\3" / "CTX\2" + header)
                                                         or v1 (a hash; missing fields as
                                                         "" / 0); incarnation: 16 lowercase hex
                                                         digits, "" for v1 / v2
  Errors:
    WRONGTYPE  the key exists and is not a context (a string that fails the v3 / v2 type rule, a
               hash without a decimal integer version >= 1, any other type)
]]

local v, n, ms, schema, by, hl, val, raw, fv, inc = read_ctx(KEYS[1])
if v == nil then return false end
if v == false then return wrongtype() end
return ctx_reply(v, n, ms, schema, by, hl, val, raw, fv, inc)
