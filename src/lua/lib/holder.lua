-- lib/holder.lua, included by the admin scripts and remove.lua (before
-- lib/config_write.lua, which uses it).
--
-- tell_holder(key, uid): what the agent of hash key is owed changed (or
-- the agent is gone): if a connection holds it, its worker is told with
-- 'config <uid>' on its channel (docs/redis-schema.md): over WebSocket
-- the worker sends it what it is owed at once, and asks Redis at its next
-- heartbeat instead of answering that itself (opamp_heartbeat_recheck)
local function tell_holder(key, uid)
    local a = redis.call('HMGET', key, 'channel', 'connected')
    if a[1] and a[2] == '1' then
        redis.call('PUBLISH', a[1], 'config ' .. uid)
    end
end
