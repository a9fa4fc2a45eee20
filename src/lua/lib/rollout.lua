-- lib/rollout.lua: staged rollouts of a group's config (docs/admin-api.md,
-- "Staged rollouts"; keys in docs/redis-schema.md).  While a rollout runs
-- or is paused, <prefix>config:group:<name> keeps the previous version,
-- which every agent of the group outside the stage is owed, and the
-- rollout's record names the new version (its files in
-- <prefix>shared:config:<to_hash>, where the version keeps them) and the
-- stage's bound: an agent is in the stage when the rank of its uid (the
-- first 32 bits of the SHA-1 of its canonical text) is below `cutoff`.
-- The rank does not change with a reconnect, a host or a worker, so the
-- plan is the same wherever the agent is decided: here (report.lua,
-- check.lua) and in the worker (src/ngx_http_opamp_fanout.c) alike.
--
-- <prefix>rollout:group:<name>, a hash: id, state (running, paused, done,
-- aborted, rolled_back), from_hash, to_hash, from_version, to_version,
-- stages (the plan's, "c<count>" or "f<fraction>", space-separated),
-- soak (ms per stage, space-separated), gates ("<name> <limit>" lines),
-- on_gate (pause, rollback), stage (1-based), stage_ms, cutoff, target,
-- created_ms, updated_ms, ended_ms, author, note, reason, and the gate
-- counts at the last resume (base_failed, base_unhealthy,
-- base_disconnected).
--
-- <prefix>group_members:<name>, a sorted set of the agents whose config
-- comes from the group, scored by rank (kept by lib/gauges.lua): a
-- stage's bound is the rank of its last agent, so that "1" is one agent.

-- the rank of a uid: 0 to 2^32 - 1
local function rollout_rank(u)
    return tonumber(string.sub(redis.sha1hex(u), 1, 8), 16)
end

-- the rollout of each group this call looked at: false (none, or not
-- running nor paused) or { to_hash, cutoff }
local rollout_cache = {}

local function rollout_of(p, name)
    local r = rollout_cache[name]
    if r == nil then
        local f = redis.call('HMGET', p .. 'rollout:group:' .. name,
                             'state', 'to_hash', 'cutoff')
        -- (a record written by hand without its hash or bound is none)
        if (f[1] == 'running' or f[1] == 'paused') and f[2] and tonumber(f[3])
        then
            r = { f[2], tonumber(f[3]) }
        else
            r = false
        end
        rollout_cache[name] = r
    end
    return r
end

-- the hash an agent of group name is owed, the group's own being h: the
-- new version's inside the stage, h outside it
local function rollout_hash(p, name, u, h)
    local r = rollout_of(p, name)
    if not r or not h or h == '' then
        return h
    end
    if rollout_rank(u) < r[2] then
        return r[1]
    end
    return h
end

-- the key of the files of hash h owed by a group: the new version's
-- (shared) during a rollout, else the group's own
local function rollout_files_key(p, name, h)
    local r = rollout_of(p, name)
    if r and h == r[1] then
        return p .. 'shared:config:' .. h
    end
    return p .. 'config:group:' .. name
end
