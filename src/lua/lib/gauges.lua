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
                       'config_hash', 'desired_config', 'desired_hash' }

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
    g = string.sub(g, 1, 6) == 'group:' and string.sub(g, 7) or ''
    return t .. h .. s .. o .. g
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
    local g = string.sub(state, 5)
    if g ~= '' then
        add('group:' .. g)
        if string.sub(state, 3, 3) == 'F' then
            add('group_failed:' .. g)
        end
        if string.sub(state, 4, 4) == 'n' then
            add('group_not_running:' .. g)
        end
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

-- after a write to the agent hash k: its state now against the one it
-- counted for (moved at the next gauge_flush()); returns whether it moved
local function gauge_update(k)
    local f = redis.call('HMGET', k, unpack(gauge_fields))
    if not f[2] then
        -- no agent there (an index entry ahead of its hash)
        return false
    end
    local new = gauge_state(f)
    if new == f[1] then
        return false
    end
    gauge_move(f[1], -1)
    gauge_move(new, 1)
    redis.call('HSET', k, 'gauge', new)
    return true
end

-- an agent hash goes: what it counted for goes with it
local function gauge_remove(k)
    gauge_move(redis.call('HGET', k, 'gauge'), -1)
end
