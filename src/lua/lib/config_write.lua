-- lib/config_write.lua: a config replaced atomically and the workers told
-- (docs/redis-schema.md, "Remote configuration"); admin_config_set.lua
-- and admin_version_rollback.lua, after lib/version_log.lua and
-- lib/holder.lua.
--
-- keys: { config key, <prefix>groups, <prefix>config_version, agent hash
-- (or the config key) }; kind "agent" or "group", name its uid or name;
-- fields the config's "file:" and "type:" fields; n its version.
-- Returns the new value of <prefix>config_version.

local function config_write(keys, kind, name, fleet, now, hash, selector,
                            priority, fields, n)
    local set = { 'hash', hash, 'updated_ms', now, 'version', n }

    if kind == 'group' then
        set[#set + 1] = 'selector'
        set[#set + 1] = selector
        set[#set + 1] = 'priority'
        set[#set + 1] = priority
    end

    for i = 1, #fields do
        set[#set + 1] = fields[i]
    end

    -- what the change concerns (report.lua, keeps_desired()): a group
    -- that keeps its selector and priority moves no agent between configs
    local scope = 'agent:' .. name
    if kind == 'group' then
        local old = redis.call('HMGET', keys[1], 'selector', 'priority')
        scope = 'all'
        if old[1] == selector and old[2] == priority then
            scope = 'group:' .. name
        end
    end

    redis.call('DEL', keys[1])
    redis.call('HSET', keys[1], unpack(set))

    if kind == 'group' then
        redis.call('ZADD', keys[2], priority, name)
    end

    local version = version_change(keys[3], scope)

    if kind == 'group' then
        redis.call('PUBLISH', fleet, 'config')
    else
        tell_holder(keys[4], name)
    end

    return version
end

-- the number the config gets: its newest version's when it exists and
-- nothing changed (a control plane that PUTs what is there again makes
-- no history), else a new version's
local function config_version_of(keys, vkey, prefix, max, kind, rec, fields)
    local nv = newest(vkey)
    if nv and nv.hash == rec.hash
       and (kind == 'agent' or (nv.selector == rec.selector
                                and nv.priority == rec.priority))
       and redis.call('EXISTS', keys[1]) == 1
    then
        return nv.n
    end
    return add_version(vkey, prefix, max, rec, fields)
end

-- a group's files change through its staged rollout while one runs: the
-- refusal of any other write of them, or nil
local function rollout_in_progress(prefix, kind, name)
    if kind ~= 'group' then
        return nil
    end
    local state = redis.call('HGET', prefix .. 'rollout:group:' .. name,
                             'state')
    if state == 'running' or state == 'paused' then
        return { 'error', '409', 'a staged rollout of this group is in '
                 .. 'progress: abort it, or let it end, first' }
    end
    return nil
end
