-- lib/gauges.lua: the fleet gauges, <prefix>fleet:gauges
-- (docs/redis-schema.md): counts of agents by transport, health, remote
-- config status, whether they run the config they are owed, and group,
-- moved when an agent's state changes, never by walking the fleet.  Each
-- agent hash keeps its own part in its field `gauge` (a short string, see
-- gauge_state()), so that a change moves exactly what the agent counted
-- for before to what it counts for now, and removing an agent takes back
-- what it counted for.

-- the agent hash's fields a state is made of, in gauge_state()'s order
local gauge_fields = { 'gauge', 'transport', 'healthy', 'config_status',
                       'config_hash', 'desired_config', 'desired_hash',
                       'connected', 'failed_hash' }

-- one character a dimension, then the group (of desired_config)
local gauge_names = {
    { w = 'transport:websocket', h = 'transport:http' },
    { ['1'] = 'health:healthy', ['0'] = 'health:unhealthy',
      ['-'] = 'health:unknown' },
    { A = 'status:APPLIED', Y = 'status:APPLYING', F = 'status:FAILED',
      U = 'status:UNSET' },
    { r = 'owed:running', n = 'owed:not_running', ['-'] = 'owed:none' },
}

local gauge_status = { APPLIED = 'A', APPLYING = 'Y', FAILED = 'F' }

-- the part of an agent of a group that counts by the version it is owed
-- (the per-version counts a staged rollout's gates read,
-- lib/rollout.lua): "@", the first 16 hex digits of desired_hash, then
-- "1" or "0": connected, and "1" or "0": it failed that hash
-- (failed_hash; so an agent that failed it and went back to the config
-- it ran before still counts as having failed it)
local function gauge_version_part(dhash, connected, failed)
    if (dhash or '') == '' then
        return ''
    end
    return '@' .. string.sub(dhash, 1, 16)
           .. (connected == '0' and '0' or '1')
           .. ((failed or '') == dhash and '1' or '0')
end

-- f: the values of gauge_fields, in order (an HMGET's answer)
local function gauge_state(f)
    local t = (f[2] == 'websocket' and 'w') or (f[2] == 'http' and 'h')
              or '-'
    local h = (f[3] == '1' or f[3] == '0') and f[3] or '-'
    local s = gauge_status[f[4] or ''] or 'U'
    local o = '-'
    if (f[7] or '') ~= '' then
        -- running what it is owed: it applied the owed config's hash
        o = (s == 'A' and f[5] == f[7]) and 'r' or 'n'
    end
    local g = f[6] or ''
    if string.sub(g, 1, 6) ~= 'group:' then
        return t .. h .. s .. o
    end
    return t .. h .. s .. o .. string.sub(g, 7)
           .. gauge_version_part(f[7], f[8], f[9])
end

-- a state's group and version part ("" when it has none)
local function gauge_group(state)
    local rest = string.sub(state, 5)
    local at = string.find(rest, '@', 1, true)
    if not at then
        return rest, ''
    end
    return string.sub(rest, 1, at - 1), string.sub(rest, at)
end

-- the moves of this call, applied by gauge_flush(): a step of the sweep
-- that removes 100 agents makes a few HINCRBYs, not 600
local gauge_delta = {}

local function gauge_move(state, by)
    if not state or state == '' then
        return
    end
    local function add(field)
        gauge_delta[field] = (gauge_delta[field] or 0) + by
    end
    add('agents')
    for i = 1, 4 do
        local n = gauge_names[i][string.sub(state, i, i)]
        if n then
            add(n)
        end
    end
    local g, part = gauge_group(state)
    if g ~= '' then
        add('group:' .. g)
        if string.sub(state, 3, 3) == 'F' then
            add('group_failed:' .. g)
        end
        if string.sub(state, 4, 4) == 'n' then
            add('group_not_running:' .. g)
        end
    end
    if #part == 19 then
        -- "<group>@<hash16>": the agents owed that version of the group
        local v = g .. string.sub(part, 1, 17)
        add('version:' .. v)
        if string.sub(state, 4, 4) == 'r' then
            add('version_running:' .. v)
        end
        if string.sub(state, 2, 2) == '0' then
            add('version_unhealthy:' .. v)
        end
        if string.sub(part, 18, 18) == '0' then
            add('version_disconnected:' .. v)
        end
        if string.sub(part, 19, 19) == '1' then
            add('version_failed:' .. v)
        end
    end
end

-- the agents of each group by rank (lib/rollout.lua): an agent that
-- moves between groups moves between the sets, and one whose state had
-- no version part yet (made before there were) is added again, which
-- the recount does for a whole fleet after an upgrade
local function gauge_members(k, old, new)
    local og, opart = gauge_group(old or '')
    local ng = gauge_group(new or '')
    if og == ng and opart ~= '' then
        return
    end
    local p, u = string.match(k, '^(.*)agent:{(.*)}$')
    if not p then
        return
    end
    if og ~= '' and og ~= ng then
        redis.call('ZREM', p .. 'group_members:' .. og, u)
    end
    if ng ~= '' then
        redis.call('ZADD', p .. 'group_members:' .. ng, rollout_rank(u), u)
    end
end

local function gauge_flush(gkey)
    for field, by in pairs(gauge_delta) do
        if by ~= 0 and redis.call('HINCRBY', gkey, field, by) <= 0 then
            -- a group that emptied goes: the hash stays as small as the
            -- fleet's groups, and a deleted group leaves nothing behind
            redis.call('HDEL', gkey, field)
        end
    end
    gauge_delta = {}
end

-- the agent hash k's state of values f (gauge_fields' order, as its
-- hash holds them after the caller's write; f[1] what it counted for):
-- the new state when it moved (the moves made at the next gauge_flush(),
-- the caller writes it to the field), else nil.  report.lua, which knows
-- the values, reads none of them again.
local function gauge_moved(k, old, f)
    local new = gauge_state(f)
    if new == old then
        return nil
    end
    gauge_members(k, old, new)
    gauge_move(old, -1)
    gauge_move(new, 1)
    return new
end

-- after a write to the agent hash k: its state now against the one it
-- counted for (moved at the next gauge_flush()); returns whether it moved
local function gauge_update(k)
    local f = redis.call('HMGET', k, unpack(gauge_fields))
    if not f[2] then
        -- no agent there (an index entry ahead of its hash)
        return false
    end
    local new = gauge_moved(k, f[1], f)
    if not new then
        return false
    end
    redis.call('HSET', k, 'gauge', new)
    return true
end

-- an agent hash goes: what it counted for goes with it
local function gauge_remove(k)
    local old = redis.call('HGET', k, 'gauge')
    gauge_members(k, old, '')
    gauge_move(old, -1)
end
