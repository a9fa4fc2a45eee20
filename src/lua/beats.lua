-- beats.lua: the heartbeats a worker received in one turn of its event
-- loop (up to 128), from agents that can settle: each takes the short way
-- of report.lua if it can (lib/short_way.lua), storing only its sequence
-- and liveness.  The layout is docs/redis-schema.md.
--
-- KEYS[1]  <prefix>config_version
-- ARGV[1]  now, Unix ms
-- ARGV[2]  key prefix
-- ARGV[3..] six per agent: instance uid (canonical text), sequence_num,
--          sequence_num - 1 ("" when sequence_num is 0), its beat_mark()
--          (report.lua, digested by the worker), what else to check
--          ("1" if it accepts restart, AcceptsRestartCommand, else "";
--          "L" for a lease renewal: the worker holding the agent
--          answered its heartbeats since the last check, and nothing
--          was published for it since, lib/short_way.lua), and its new
--          expires_ms
--
-- Returns { n, ... }, one per agent: 0 when it did not take the short
-- way (the worker sends it again, one report.lua call), else its
-- settled_until (Unix ms) when an offer is out unacknowledged, or 1: the
-- worker may answer the agent's next heartbeats itself until then
-- (opamp_heartbeat_recheck).

--@include lib/state.lua
--@include lib/short_way.lua

version_key, now_text, prefix = KEYS[1], ARGV[1], ARGV[2]
now = tonumber(now_text)

local out, members = {}, {}
for i = 3, #ARGV - 5, 6 do
    local u = ARGV[i]
    local k = prefix .. 'agent:{' .. u .. '}'
    -- a renewal's window ends before settled_until (the worker's), and
    -- a field that is not there (most agents have no offer out) costs
    -- Redis a walk of the whole hash
    local st
    if ARGV[i + 4] == 'L' then
        st = redis.call('HMGET', k, 'sequence_num', 'settled')
    else
        st = redis.call('HMGET', k, 'sequence_num', 'settled',
                        'settled_until')
    end
    out[#out + 1] = short_way(k, u, ARGV[i + 1], ARGV[i + 2], st,
                              ARGV[i + 3], ARGV[i + 4],
                              ARGV[i + 5], members)
                    and (tonumber(st[3]) or 1) or 0
end
if #members > 0 then
    redis.call('ZADD', prefix .. 'agents', unpack(members))
end
return out
