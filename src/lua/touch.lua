-- touch.lua: renew the lease of a WebSocket agent that answers pings but
-- sent no message for a while, so that it keeps counting as live.
--
-- KEYS[1]  <prefix>agent:{<uid>}
-- ARGV[1]  now, Unix ms
-- ARGV[2]  connection id
-- ARGV[3]  opamp_agent_timeout, ms
-- ARGV[4]  <prefix>agents, the fleet index
-- ARGV[5]  instance uid, canonical text
--
-- Returns 1 when renewed, 0 when another connection holds the agent or
-- it was removed (then nothing is written: no half agent, no index entry).

if redis.call('HGET', KEYS[1], 'conn') ~= ARGV[2] then
    return 0
end

redis.call('HSET', KEYS[1], 'last_seen_ms', ARGV[1],
           'expires_ms', tostring(tonumber(ARGV[1]) + tonumber(ARGV[3])))
redis.call('ZADD', ARGV[4], ARGV[1], ARGV[5])

return 1
