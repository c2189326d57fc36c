--[[
  wait_publish.lua - the wait notification of the Lua engine (docs/PROTOCOL.md, "CTX.WAIT" and
  "The Lua engine's wait channel"). A part: the SDK puts it in place of the
  '-- [include wait_publish]' line of cas.lua and del.lua.

  wait_publish(key, what) publishes `what` (the new version in decimal, or "deleted") on the
  key's wait channel, which hashes to the key's slot:
    "__ctx:wait:" .. key           when the key has a hash tag ({...} with something inside)
    "__ctx:wait:{" .. key .. "}"   when it has none and holds no '}'
    "__ctx:wait:" .. key           otherwise (no tag, a '}' inside: no name with the key's slot
                                   can be built; published with PUBLISH, never SPUBLISH)
  SPUBLISH (a shard channel) on Redis 7.0+, PUBLISH on 6.2 and for the third kind of key.
  redis.pcall: a writer without the channel in its ACL (&__ctx:wait:*) still writes (the
  waiters then see the change at their next once-a-second check).
]]

local function wait_publish(key, what)
  local channel, sharded
  local open = string.find(key, '{', 1, true)
  local close = open and string.find(key, '}', open + 1, true)
  if close and close > open + 1 then
    channel, sharded = '__ctx:wait:' .. key, true
  elseif not string.find(key, '}', 1, true) then
    channel, sharded = '__ctx:wait:{' .. key .. '}', true
  else
    channel, sharded = '__ctx:wait:' .. key, false
  end
  redis.pcall((sharded and redis.REDIS_VERSION_NUM) and 'SPUBLISH' or 'PUBLISH', channel, what)
end
