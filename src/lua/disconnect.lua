-- disconnect.lua: mark an agent disconnected when its connection ends,
-- unless another connection has taken the agent over meanwhile.
--
-- KEYS[1]  <prefix>agent:{<uid>}
-- ARGV[1]  now, Unix ms
-- ARGV[2]  connection id that ended
-- ARGV[3]  the last sequence_num the worker answered itself (heartbeats
--          it answered without Redis, opamp_heartbeat_recheck), or "":
--          stored so that the agent's next connection stays in sequence
--
-- Returns 1 when the agent was marked, 0 when another connection holds it.

--@include lib/rollout.lua
--@include lib/gauges.lua

if redis.call('HGET', KEYS[1], 'conn') ~= ARGV[2] then
    return 0
end

-- a settled agent is settled on its connection: the next one takes the
-- long way
redis.call('HSET', KEYS[1], 'connected', '0',
           'disconnected_at_ms', ARGV[1], 'settled', '')
if ARGV[3] and ARGV[3] ~= '' then
    redis.call('HSET', KEYS[1], 'sequence_num', ARGV[3])
end

-- an agent of a group counts as disconnected for the version it is owed
-- (lib/gauges.lua), which a staged rollout's gate reads
gauge_update(KEYS[1])
gauge_flush(string.match(KEYS[1], '^(.*)agent:{') .. 'fleet:gauges')

return 1
