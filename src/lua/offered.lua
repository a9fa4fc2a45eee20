-- offered.lua: what a worker decided by itself for the WebSocket agents
-- it holds after a fleet change (src/ngx_http_opamp_fanout.c), written
-- in bulk after the agents were sent what they are owed: which config
-- each is owed now and the config_version of that decision, the offer,
-- its settled mark moved to the new version when the change leaves it
-- owed nothing, and the fleet gauges.  An agent that another connection
-- holds now, or that a newer decision has reached, is left alone.
-- The layout is docs/redis-schema.md.
--
-- KEYS[1]  <prefix>fleet:gauges
-- ARGV[1]  now, Unix ms
-- ARGV[2]  key prefix
-- ARGV[3]  config_version of the decisions
-- ARGV[4..] six per agent: instance uid (canonical text), connection id,
--          the oldest config_version its "settled" may have to be moved
--          to ARGV[3] ("" never), its desired_config ("-": the agent
--          takes no remote config; nothing of it changes), its
--          desired_hash, "1" when it was sent that config now
--
-- Returns the number of agents written.

--@include lib/gauges.lua

local now, prefix, version = ARGV[1], ARGV[2], ARGV[3]
local v = tonumber(version)
local fields = { 'conn', 'config_version', 'settled' }
for _, f in ipairs(gauge_fields) do
    fields[#fields + 1] = f
end

local written = 0
for i = 4, #ARGV - 5, 6 do
    local k = prefix .. 'agent:{' .. ARGV[i] .. '}'
    local f = redis.call('HMGET', k, unpack(fields))
    if f[1] == ARGV[i + 1]
       and (ARGV[i + 3] == '-' or tonumber(f[2] or '0') <= v)
    then
        local put, gone = {}, {}
        local function set(name, value)
            if value == '' then
                gone[#gone + 1] = name
            else
                put[#put + 1] = name
                put[#put + 1] = value
            end
        end
        if ARGV[i + 3] ~= '-' then
            set('config_version', version)
            set('desired_config', ARGV[i + 3])
            set('desired_hash', ARGV[i + 4])
            -- the gauge fields after this write (gauge_fields' order)
            f[9], f[10] = ARGV[i + 3], ARGV[i + 4]
        end
        if ARGV[i + 5] == '1' then
            set('offered_hash', ARGV[i + 4])
            set('offered_ms', now)
            -- an offer is out: its next heartbeat takes the long way
            set('settled', '')
        elseif f[3] and ARGV[i + 2] ~= '' then
            local sv, mark = string.match(f[3], '^(%d+) (.*)$')
            if sv and tonumber(sv) >= tonumber(ARGV[i + 2])
               and tonumber(sv) < v
            then
                set('settled', version .. ' ' .. mark)
            end
        end
        local new = gauge_state({ f[4], f[5], f[6], f[7], f[8], f[9],
                                  f[10] })
        if f[5] and new ~= f[4] then
            gauge_move(f[4], -1)
            gauge_move(new, 1)
            set('gauge', new)
        end
        if #put > 0 then
            redis.call('HSET', k, unpack(put))
        end
        if #gone > 0 then
            redis.call('HDEL', k, unpack(gone))
        end
        written = written + 1
    end
end
gauge_flush(KEYS[1])
return written
