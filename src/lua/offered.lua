-- offered.lua: what a worker decided by itself for the WebSocket agents
-- it holds after a fleet change (src/ngx_http_opamp_fanout.c), written
-- in bulk after the agents were sent what they are owed: which config
-- each is owed now and the config_version of that decision, the offer,
-- its settled mark moved to the new version when the change leaves it
-- owed nothing, and the fleet gauges.  An agent that another connection
-- holds now, or that a newer decision has reached, is left alone.  Two
-- commands an agent, and the gauges' few at the end: the worker says
-- what changed, so that nothing else is read or worked out here.
-- The layout is docs/redis-schema.md.
--
-- KEYS[1]  <prefix>fleet:gauges
-- ARGV[1]  now, Unix ms
-- ARGV[2]  key prefix
-- ARGV[3]  config_version of the decisions
-- ARGV[4..] six per agent: instance uid (canonical text), connection id,
--          the oldest config_version its "settled" may be moved to
--          ARGV[3] from ("": never), its desired_config ("-": the agent
--          takes no remote config; nothing of it changes), its
--          desired_hash, and what happened: "o" when it was sent that
--          config now, "c" when its desired config or hash changed, both,
--          or ""
--
-- Returns the number of agents written.

--@include lib/gauges.lua

local call = redis.call
local now, prefix, version = ARGV[1], ARGV[2], ARGV[3]
local v = tonumber(version)

-- gauge moves by (old state, new state), applied once each at the end:
-- a fan-out moves its agents between a few states
local moves = {}

local written = 0
for i = 4, #ARGV - 5, 6 do
    local k = prefix .. 'agent:{' .. ARGV[i] .. '}'
    local desired, dhash, what = ARGV[i + 3], ARGV[i + 4], ARGV[i + 5]
    local f = call('HMGET', k, 'conn', 'config_version', 'settled', 'gauge',
                   'config_hash')
    if f[1] == ARGV[i + 1]
       and (desired == '-' or tonumber(f[2] or '0') <= v)
    then
        local put
        if desired == '-' then
            put = {}
        else
            put = { 'config_version', version, 'desired_config', desired,
                    'desired_hash', dhash }
        end
        if string.find(what, 'o', 1, true) then
            put[#put + 1] = 'offered_hash'
            put[#put + 1] = dhash
            put[#put + 1] = 'offered_ms'
            put[#put + 1] = now
            -- an offer is out: its next heartbeat takes the long way
            put[#put + 1] = 'settled'
            put[#put + 1] = ''
        elseif f[3] and ARGV[i + 2] ~= '' then
            local sv, mark = string.match(f[3], '^(%d+) (.*)$')
            sv = tonumber(sv)
            if sv and sv >= tonumber(ARGV[i + 2]) and sv < v then
                put[#put + 1] = 'settled'
                put[#put + 1] = version .. ' ' .. mark
            end
        end
        local old = f[4]
        if string.find(what, 'c', 1, true) and old and #old >= 4 then
            -- what it counts for (gauge_state() of lib/gauges.lua): the
            -- transport, health and status it counted for, and what it
            -- is owed now
            local o = '-'
            if dhash ~= '' then
                o = (string.sub(old, 3, 3) == 'A' and f[5] == dhash)
                    and 'r' or 'n'
            end
            local g = string.sub(desired, 1, 6) == 'group:'
                      and string.sub(desired, 7) or ''
            local new = string.sub(old, 1, 3) .. o .. g
            if new ~= old then
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
