-- admin_config_set.lua: replace a config atomically and tell the workers
-- (docs/redis-schema.md, "Remote configuration").
--
-- KEYS[1]  the config hash: <prefix>config:agent:{<uid>} or
--          <prefix>config:group:<name>
-- KEYS[2]  <prefix>groups
-- KEYS[3]  <prefix>config_version (and <prefix>config_version_scope)
-- KEYS[4]  the agent hash <prefix>agent:{<uid>} (agent configs), or the
--          same as KEYS[1] for groups
-- ARGV[1]  "agent" or "group"
-- ARGV[2]  uid (canonical text) or group name
-- ARGV[3]  <prefix>fleet, the channel of every worker
-- ARGV[4]  now, Unix ms
-- ARGV[5]  config_hash, hex
-- ARGV[6]  selector (groups)
-- ARGV[7]  priority (groups)
-- ARGV[8..] file name, body, content type, file name, body, ...
--
-- Returns the new value of <prefix>config_version.

local set = { 'hash', ARGV[5], 'updated_ms', ARGV[4] }

if ARGV[1] == 'group' then
    set[#set + 1] = 'selector'
    set[#set + 1] = ARGV[6]
    set[#set + 1] = 'priority'
    set[#set + 1] = ARGV[7]
end

for i = 8, #ARGV, 3 do
    set[#set + 1] = 'file:' .. ARGV[i]
    set[#set + 1] = ARGV[i + 1]
    if ARGV[i + 2] ~= '' then
        set[#set + 1] = 'type:' .. ARGV[i]
        set[#set + 1] = ARGV[i + 2]
    end
end

-- what the change concerns (report.lua, keeps_desired()): a group that
-- keeps its selector and priority moves no agent between configs
local scope = 'agent:' .. ARGV[2]
if ARGV[1] == 'group' then
    local old = redis.call('HMGET', KEYS[1], 'selector', 'priority')
    scope = 'all'
    if old[1] == ARGV[6] and old[2] == ARGV[7] then
        scope = 'group:' .. ARGV[2]
    end
end

redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(set))

if ARGV[1] == 'group' then
    redis.call('ZADD', KEYS[2], ARGV[7], ARGV[2])
end

local version = redis.call('INCR', KEYS[3])
redis.call('SET', KEYS[3] .. '_scope', version .. ' ' .. scope)

if ARGV[1] == 'group' then
    redis.call('PUBLISH', ARGV[3], 'config')
else
    local a = redis.call('HMGET', KEYS[4], 'channel', 'connected')
    if a[1] and a[2] == '1' then
        redis.call('PUBLISH', a[1], 'config ' .. ARGV[2])
    end
end

return version
