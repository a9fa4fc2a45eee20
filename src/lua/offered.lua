-- offered.lua: what a worker decided by itself for the WebSocket agents
-- it holds after a fleet change (src/ngx_http_opamp_fanout.c), written
-- in bulk after the agents were sent what they are owed: which config
-- each is owed now and the config_version of that decision, the offer,
-- its settled mark moved to the new version when the change leaves it
-- owed nothing, and the fleet gauges.  An agent that another connection
-- holds now, or that a newer decision has reached, is left alone.  Two
-- commands an agent, of the fields that the decision reads or changes,
-- and the gauges' few at the end: the worker says what changed, so that
-- nothing else is read or worked out here.  The agents of a call share
-- a few kinds of decision, each given once: every argument costs Redis
-- a Lua string.  The layout is docs/redis-schema.md.
--
-- KEYS[1]  <prefix>fleet:gauges
-- ARGV[1]  now, Unix ms
-- ARGV[2]  key prefix
-- ARGV[3]  config_version of the decisions
-- ARGV[4]  "<server_id>:<pid>:", the worker's connections' prefix
-- ARGV[5]  the number of kinds of decision, K, then four a kind: the
--          oldest config_version an agent's "settled" may be moved to
--          ARGV[3] from ("": never), its desired_config ("-": the agent
--          takes no remote config; nothing of it changes), its
--          desired_hash, and what happened: "o" when it was sent that
--          config now, "c" when its desired config or hash changed, both,
--          or ""
-- ARGV[6 + 4K..] three per agent: instance uid (canonical text), the
--          number of its connection, and its kind (1 to K)
--
-- Returns the number of agents written.

--@include lib/rollout.lua
--@include lib/gauges.lua

local call = redis.call
local now, version, conns = ARGV[1], ARGV[3], ARGV[4]
local kprefix = ARGV[2] .. 'agent:{'
local v = tonumber(version)

local kinds = {}
for j = 1, tonumber(ARGV[5]) do
    local b = 2 + 4 * j
    kinds[j] = { from = tonumber(ARGV[b]), desired = ARGV[b + 1],
                 hash = ARGV[b + 2],
                 offered = string.find(ARGV[b + 3], 'o', 1, true) ~= nil,
                 changed = string.find(ARGV[b + 3], 'c', 1, true) ~= nil }
end

-- gauge moves by (old state, new state), applied once each at the end:
-- a fan-out moves its agents between a few states
local moves = {}

local written = 0
for i = 6 + 4 * #kinds, #ARGV - 2, 3 do
    local k = kprefix .. ARGV[i] .. '}'
    local kind = kinds[tonumber(ARGV[i + 2])]
    local desired, dhash = kind.desired, kind.hash
    local f
    if kind.changed then
        f = call('HMGET', k, 'conn', 'config_version', 'settled', 'gauge',
                 'config_hash', 'connected', 'failed_hash')
    else
        f = call('HMGET', k, 'conn', 'config_version', 'settled')
    end
    if f[1] == conns .. ARGV[i + 1]
       and (desired == '-' or tonumber(f[2] or '0') <= v)
    then
        local put = {}
        if desired ~= '-' then
            put[1] = 'config_version'
            put[2] = version
            if kind.changed then
                put[3] = 'desired_config'
                put[4] = desired
                put[5] = 'desired_hash'
                put[6] = dhash
            end
        end
        local sv, mark
        if f[3] then
            sv, mark = string.match(f[3], '^(%d+) (.*)$')
            sv = tonumber(sv)
        end
        if kind.offered then
            put[#put + 1] = 'offered_hash'
            put[#put + 1] = dhash
            put[#put + 1] = 'offered_ms'
            put[#put + 1] = now
            -- an offer is out: its next heartbeat takes the long way, as
            -- a mark older than config_version makes it (the one made at
            -- this version or later is emptied)
            if sv and sv >= v then
                put[#put + 1] = 'settled'
                put[#put + 1] = ''
            end
        elseif sv and kind.from and sv >= kind.from and sv < v then
            put[#put + 1] = 'settled'
            put[#put + 1] = version .. ' ' .. mark
        end
        local old = f[4]
        if kind.changed and old and #old >= 4 then
            -- what it counts for (gauge_state() of lib/gauges.lua): the
            -- transport, health and status it counted for, and what it
            -- is owed now
            local o = '-'
            if dhash ~= '' then
                o = (string.sub(old, 3, 3) == 'A' and f[5] == dhash)
                    and 'r' or 'n'
            end
            local new = string.sub(old, 1, 3) .. o
            if string.sub(desired, 1, 6) == 'group:' then
                new = new .. string.sub(desired, 7)
                      .. gauge_version_part(dhash, f[6], f[7])
            end
            if new ~= old then
                gauge_members(k, old, new)
                local by = moves[old]
                if not by then
                    by = {}
                    moves[old] = by
                end
                by[new] = (by[new] or 0) + 1
                put[#put + 1] = 'gauge'
                put[#put + 1] = new
            end
        end
        if #put > 0 then
            call('HSET', k, unpack(put))
        end
        written = written + 1
    end
end
for old, by in pairs(moves) do
    for new, n in pairs(by) do
        gauge_move(old, -n)
        gauge_move(new, n)
    end
end
gauge_flush(KEYS[1])
return written
