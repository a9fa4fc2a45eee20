-- lib/rollout_steps.lua, after lib/versions.lua, lib/version_log.lua and
-- lib/rollout.lua: the steps of a staged rollout (rollout_start.lua,
-- rollout_tick.lua, rollout_action.lua).  Each runs inside one script
-- call, so that two workers or hosts that step the same rollout at once
-- are put one after the other by Redis: the second finds the step made
-- and makes none, and a stage is neither skipped nor taken twice.
-- Every step that changes what an agent is owed tells the workers as a
-- change of the group's files does: config_version with the scope
-- "group:<name>" and "config" on the fleet channel.

-- ro: the fields of a rollout record, as a table (HGETALL's pairs)
local function ro_record(k)
    local all = redis.call('HGETALL', k)
    if #all == 0 then
        return nil
    end
    local ro = {}
    for i = 1, #all, 2 do
        ro[all[i]] = all[i + 1]
    end
    return ro
end

local function ro_words(s)
    local t = {}
    for w in string.gmatch(s or '', '%S+') do
        t[#t + 1] = w
    end
    return t
end

-- the agents a stage ("c<count>" or "f<fraction>") reaches of n
local function ro_stage_target(spec, n)
    local v = tonumber(string.sub(spec, 2)) or 0
    if string.sub(spec, 1, 1) == 'c' then
        return math.min(v, n)
    end
    return math.min(n, math.ceil(v * n - 1e-9))
end

-- the rank bound of stage i: a count or share of the agents the group
-- has now, never fewer than the stage before reached (cutoff, target);
-- the last stage takes in every rank, so that agents that come later
-- are in it too
local function ro_stage_bound(p, name, specs, i, cutoff, target)
    if i == #specs then
        return 4294967296, -1
    end
    local mkey = p .. 'group_members:' .. name
    local t = ro_stage_target(specs[i], redis.call('ZCARD', mkey))
    if t <= target then
        return cutoff, target
    end
    local r = redis.call('ZRANGE', mkey, t - 1, t - 1, 'WITHSCORES')
    if not r[2] then
        return cutoff, target
    end
    return math.max(cutoff, tonumber(r[2]) + 1), t
end

-- the workers re-decide the group's agents
local function ro_tell(vkey, fleet, name)
    local v = version_change(vkey, 'group:' .. name)
    redis.call('PUBLISH', fleet, 'config')
    return v
end

-- the gate counts of the version being rolled out, from the fleet gauges
-- (lib/gauges.lua): reached (owed it), running, unhealthy,
-- disconnected, failed
local function ro_counts(gkey, name, to_hash)
    local v = name .. '@' .. string.sub(to_hash, 1, 16)
    local c = redis.call('HMGET', gkey, 'version:' .. v,
                         'version_running:' .. v, 'version_unhealthy:' .. v,
                         'version_disconnected:' .. v, 'version_failed:' .. v)
    return { reached = tonumber(c[1] or '0'), running = tonumber(c[2] or '0'),
             unhealthy = tonumber(c[3] or '0'),
             disconnected = tonumber(c[4] or '0'),
             failed = tonumber(c[5] or '0') }
end

-- the first gate the counts break, as a reason, or nil.  Gates: lines
-- "<name> c<count>" or "<name> f<share>", and "not_applied ... <ms>"
local function ro_gate(ro, c, now)
    for line in string.gmatch(ro.gates or '', '[^\n]+') do
        local w = ro_words(line)
        local gate, lim = w[1], w[2]
        local n = 0
        if gate == 'not_applied' then
            if now - tonumber(ro.stage_ms) >= tonumber(w[3] or '0') then
                n = c.reached - c.running
            end
        else
            n = (c[gate] or 0) - tonumber(ro['base_' .. gate] or '0')
        end
        local limit = tonumber(string.sub(lim, 2)) or 0
        if string.sub(lim, 1, 1) == 'f' then
            limit = limit * c.reached
        end
        if n > limit then
            return string.format('gate %s: %d of the %d agents reached',
                                 gate, n, c.reached)
        end
    end
    return nil
end

-- the rollout ends: "done" puts the new version in the group, the others
-- leave the group's previous version to every agent
local function ro_end(p, k, ro, state, reason, now, vkey, fleet, rkey)
    local name = ro.group
    -- the gate counts as they were at the end: once the agents move back
    -- to the previous version, the counts of the new one fall to nothing
    local c = ro_counts(p .. 'fleet:gauges', name, ro.to_hash)
    redis.call('HSET', k, 'end_reached', tostring(c.reached),
               'end_running', tostring(c.running),
               'end_unhealthy', tostring(c.unhealthy),
               'end_disconnected', tostring(c.disconnected),
               'end_failed', tostring(c.failed))
    if state == 'done' then
        local gk = p .. 'config:group:' .. name
        local _, fields = content_files(p, ro.to_hash)
        local g = redis.call('HMGET', gk, 'selector', 'priority')
        local set = { 'hash', ro.to_hash, 'updated_ms', tostring(now),
                      'version', ro.to_version, 'selector', g[1] or '',
                      'priority', g[2] or '0' }
        for i = 1, #fields do
            set[#set + 1] = fields[i]
        end
        redis.call('DEL', gk)
        redis.call('HSET', gk, unpack(set))
    end
    redis.call('HSET', k, 'state', state, 'reason', reason or '',
               'ended_ms', tostring(now), 'updated_ms', tostring(now))
    redis.call('ZREM', rkey, name)
    return ro_tell(vkey, fleet, name)
end

-- the next stage, or the end after the last
local function ro_advance(p, k, ro, now, vkey, fleet, rkey)
    local specs = ro_words(ro.stages)
    local i = tonumber(ro.stage)
    if i >= #specs then
        return ro_end(p, k, ro, 'done', '', now, vkey, fleet, rkey)
    end
    local cutoff, target = ro_stage_bound(p, ro.group, specs, i + 1,
                                          tonumber(ro.cutoff),
                                          tonumber(ro.target))
    redis.call('HSET', k, 'stage', tostring(i + 1),
               'stage_ms', tostring(now), 'cutoff', string.format('%d', cutoff),
               'target', tostring(target), 'state', 'running',
               'updated_ms', tostring(now))
    return ro_tell(vkey, fleet, ro.group)
end

-- what a rollout's record says, for the admin API: its fields and the
-- gate counts now, as one flat list
local function ro_answer(gkey, ro)
    local out = {}
    for f, v in pairs(ro) do
        out[#out + 1] = f
        out[#out + 1] = v
    end
    if ro.to_hash then
        -- live while it runs, as they were at the end after
        local c = ro_counts(gkey, ro.group, ro.to_hash)
        for _, f in ipairs({ 'reached', 'running', 'unhealthy',
                             'disconnected', 'failed' }) do
            out[#out + 1] = 'count_' .. f
            out[#out + 1] = ro['end_' .. f] or tostring(c[f])
        end
    end
    return out
end
