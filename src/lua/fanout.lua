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
--          one per line ("": none); "<name>@<config_hash>": the files of
--          that version of the group (a rollout's new one), with its hash
--
-- Returns { config_version,
--           { "<version> <scope>", ... newest first },
--           { name, selector, hash, rollout, ... by precedence: priority,
--             then name; rollout "<to_hash> <cutoff>" while a staged
--             rollout of the group runs or is paused (lib/rollout.lua:
--             agents whose rank is below the cutoff are owed to_hash),
--             else "" },
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
    local ro = redis.call('HMGET', ARGV[1] .. 'rollout:group:' .. e[1],
                          'state', 'to_hash', 'cutoff')
    groups[#groups + 1] = (ro[1] == 'running' or ro[1] == 'paused')
                          and ro[2] and ro[3] and (ro[2] .. ' ' .. ro[3])
                          or ''
end

local files = {}
for name in string.gmatch(ARGV[2], '[^\n]+') do
    files[#files + 1] = name
    local hash = string.match(name, '@(%x+)$')
    if hash then
        local f = redis.call('HGETALL', ARGV[1] .. 'shared:config:' .. hash)
        if #f > 0 then
            f[#f + 1] = 'hash'
            f[#f + 1] = hash
        end
        files[#files + 1] = f
    else
        files[#files + 1] = redis.call('HGETALL',
                                       ARGV[1] .. 'config:group:' .. name)
    end
end

return { version, log, groups, files }
