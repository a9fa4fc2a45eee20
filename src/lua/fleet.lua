-- fleet.lua: the fleet gauges for a scrape of opamp_metrics, in a number
-- of steps that does not grow with the fleet: two O(log N) counts of the
-- index and the gauges hash, whose size is that of the groups
-- (lib/gauges.lua keeps it).
--
-- KEYS[1]  <prefix>agents
-- KEYS[2]  <prefix>fleet:gauges
-- ARGV[1]  now less the longest opamp_agent_timeout, Unix ms
--
-- Returns { agents in the index, agents seen since ARGV[1],
--           the gauges hash (HGETALL) }

return { redis.call('ZCARD', KEYS[1]),
         redis.call('ZCOUNT', KEYS[1], ARGV[1], '+inf'),
         redis.call('HGETALL', KEYS[2]) }
