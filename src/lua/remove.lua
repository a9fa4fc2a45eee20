-- remove.lua: remove agents with everything that is only theirs: the
-- retention sweep (opamp_agent_retention) takes a bounded batch of
-- departed agents per call; DELETE agents/<uid> removes one at once.
-- What an operator set for a uid (config:agent:{<uid>},
-- connection_settings:{<uid>}, packages:{<uid>}) stays.
--
-- KEYS[1]  <prefix>agents
-- KEYS[2]  "sweep" only: <prefix>sweep:lease, the worker that sweeps
-- ARGV[1]  key prefix
-- ARGV[2]  "sweep" or "agent"
-- ARGV[3]  now, Unix ms
-- "agent":
-- ARGV[4]  instance uid, canonical text
-- "sweep":
-- ARGV[4]  cutoff, Unix ms: agents last seen before it have departed
-- ARGV[5]  how many index entries to examine at most
-- ARGV[6]  offset into the departed range: live agents a previous call
--          kept there are not examined again and again
-- ARGV[7]  the calling worker (its channel name)
-- ARGV[8]  the lease, ms: a worker that holds it (or finds it free) sweeps
--          and holds it this long again; any other worker gets nothing to
--          do, so that one worker of the fleet sweeps at a time
-- A sweep step also recomputes the fleet gauges' and the inventory's part
-- of 100 agents of the index, from a cursor kept in <prefix>fleet:recount.
--
-- Returns, "agent": 1 when there was anything of the agent (hash, index
-- entry, or something queued for it), else 0; "sweep": { removed,
-- examined, kept (live, still in the range), 1 } for the lease holder,
-- { 0, 0, 0, 0 } for any other worker

--@include lib/rollout.lua
--@include lib/gauges.lua
--@include lib/protobuf.lua
--@include lib/attributes.lua
--@include lib/status.lua
--@include lib/inventory.lua
--@include lib/holder.lua

local prefix, now = ARGV[1], tonumber(ARGV[3])

-- agents whose part of the fleet gauges a sweep step recomputes
local RECOUNT = 100

-- the hash, its status fields, the index entry, the queued command and
-- messages, and the references to shared content (report.lua, refer()):
-- the last agent out deletes the content
local function remove(uid)
    local key = prefix .. 'agent:{' .. uid .. '}'
    gauge_remove(key)
    inventory_remove(prefix, key)
    local refs = redis.call('HMGET', key, 'effective_config_ref',
                            'available_components_ref')
    for i, kind in ipairs({ 'config', 'components' }) do
        if refs[i] then
            local k = prefix .. 'shared:' .. kind .. ':' .. refs[i]
            if redis.call('HINCRBY', k, 'refs', -1) <= 0 then
                redis.call('DEL', k)
            end
        end
    end
    return redis.call('DEL', key, prefix .. 'status:{' .. uid .. '}',
                      prefix .. 'command:{' .. uid .. '}',
                      prefix .. 'outbox:{' .. uid .. '}')
           + redis.call('ZREM', KEYS[1], uid)
end

if ARGV[2] == 'agent' then
    -- its worker may answer its heartbeats itself: told, it asks Redis
    -- at the next one, which asks the agent for its full state
    tell_holder(prefix .. 'agent:{' .. ARGV[4] .. '}', ARGV[4])
    local r = remove(ARGV[4]) > 0 and 1 or 0
    gauge_flush(prefix .. 'fleet:gauges')
    inventory_flush(prefix)
    return r
end

local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[7] then
    return { 0, 0, 0, 0 }
end
redis.call('SET', KEYS[2], ARGV[7], 'PX', tonumber(ARGV[8]))

local cutoff = tonumber(ARGV[4])
local uids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[4],
                        'LIMIT', tonumber(ARGV[6]), tonumber(ARGV[5]))
local removed, kept = 0, 0

for _, uid in ipairs(uids) do
    -- the index may lag behind the hash, and a live agent (connected and
    -- not expired: a WebSocket agent with a long heartbeat interval) is
    -- never removed, whatever its last_seen_ms
    local a = redis.call('HMGET', prefix .. 'agent:{' .. uid .. '}',
                         'last_seen_ms', 'connected', 'expires_ms')
    local seen = tonumber(a[1] or '')
    if seen and seen >= cutoff then
        redis.call('ZADD', KEYS[1], a[1], uid)
    elseif seen and a[2] == '1' and tonumber(a[3] or '0') > now then
        kept = kept + 1
    else
        remove(uid)
        removed = removed + 1
    end
end

-- the gauges' and the inventory's repair (lib/gauges.lua,
-- lib/inventory.lua): a window of the index a step, in rank order, each
-- agent's part recomputed from its fields, so that a direct write to
-- agent hashes or status strings that bypassed the scripts is counted
-- right within (fleet size / window) steps; not while a backlog of
-- departed agents is cleared, whose steps stay as short as they were
if #uids < tonumber(ARGV[5]) then
    local rkey = prefix .. 'fleet:recount'
    local from = tonumber(redis.call('GET', rkey) or '0') or 0
    local win = redis.call('ZRANGE', KEYS[1], from, from + RECOUNT - 1)
    for _, u in ipairs(win) do
        gauge_update(prefix .. 'agent:{' .. u .. '}')
        inventory_recount(prefix, prefix .. 'agent:{' .. u .. '}',
                          prefix .. 'status:{' .. u .. '}')
    end
    redis.call('SET', rkey, #win < RECOUNT and 0 or from + #win)
end
gauge_flush(prefix .. 'fleet:gauges')
inventory_flush(prefix)

return { removed, #uids, kept, 1 }
