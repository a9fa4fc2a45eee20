-- fanout.lua: what a worker needs to decide by itself, for every
-- WebSocket agent it holds, what a fleet change means for the agent
-- (src/ngx_http_opamp_fanout.c): the config_version, the recent changes
-- and what each concerned, and the groups by precedence.  One call per
-- change and worker, whatever the number of agents; its cost is that of
-- the groups.  The layout is docs/redis-schema.md.
--
-- KEYS[1]  <prefix>config_version (and its _log)
-- KEYS[2]  <prefix>groups
-- ARGV[1]  key prefix
-- ARGV[2]  names of groups whose fields to return in full (HGETALL),
--          one per line ("": none)
--
-- Returns { config_version,
--           { "<version> <scope>", ... newest first },
--           { name, selector, hash, ... by precedence: priority, then
--             name },
--           { name, HGETALL of its hash, ... for each group of ARGV[2] } }

--@include lib/groups.lua

local version = redis.call('GET', KEYS[1]) or '0'
local log = redis.call('LRANGE', KEYS[1] .. '_log', 0, -1)

local groups = {}
for _, e in ipairs(groups_by_precedence(KEYS[2])) do
    local r = redis.call('HMGET', ARGV[1] .. 'config:group:' .. e[1],
                         'selector', 'hash')
    groups[#groups + 1] = e[1]
    groups[#groups + 1] = r[1] or ''
    groups[#groups + 1] = r[2] or ''
end

local files = {}
for name in string.gmatch(ARGV[2], '[^\n]+') do
    files[#files + 1] = name
    files[#files + 1] = redis.call('HGETALL',
                                   ARGV[1] .. 'config:group:' .. name)
end

return { version, log, groups, files }
