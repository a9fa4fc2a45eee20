-- fleet.lua: the fleet gauges for a scrape of opamp_metrics and for the
-- admin API's GET fleet, in a number of steps that does not grow with the
-- fleet: two O(log N) counts of the index, the gauges hash, whose size is
-- that of the groups (lib/gauges.lua keeps it), and for the admin API the
-- inventory hash, bounded by lib/inventory.lua.
--
-- KEYS[1]  <prefix>agents
-- KEYS[2]  <prefix>fleet:gauges
-- KEYS[3]  <prefix>fleet:inventory (the admin API only)
-- ARGV[1]  now less the longest opamp_agent_timeout, Unix ms
--
-- Returns { agents in the index, agents seen since ARGV[1],
--           the gauges hash (HGETALL)[, the inventory hash (HGETALL)] }

local out = { redis.call('ZCARD', KEYS[1]),
              redis.call('ZCOUNT', KEYS[1], ARGV[1], '+inf'),
              redis.call('HGETALL', KEYS[2]) }
if KEYS[3] then
    out[4] = redis.call('HGETALL', KEYS[3])
end
return out
