--[[
  wait_publish.lua - the wait notification of the Lua engine (docs/PROTOCOL.md, "CTX.WAIT" and
  "The wait channel"). A part: the SDK puts it in place of the '-- [include wait_publish]' line
  of cas.lua and del.lua.

  wait_publish(channel, shard, what) publishes `what` (the new version in decimal, or "deleted")
  on the key's wait channel, which the SDK names and passes in ARGV (sdk/ctxlink/_wait.py,
  wait_channel: the one place the naming rule lives); "" publishes nothing. `shard` "1": the
  channel hashes to the key's slot, so SPUBLISH (a shard channel) on Redis 7.0+; else PUBLISH.
  redis.pcall: a writer without the channel in its ACL (&__ctx:wait:*) still writes (the waiters
  then see the change at their next once-a-second check), and a raw caller's channel outside
  the key's slot makes SPUBLISH fail, not the write.
]]

local function wait_publish(channel, shard, what)
  if channel and channel ~= '' then
    redis.pcall((shard == '1' and redis.REDIS_VERSION_NUM) and 'SPUBLISH' or 'PUBLISH', channel, what)
  end
end
