-- host.lua: one nginx host's own figures (src/ngx_http_opamp_host.c),
-- written by one worker of the host every few seconds: the host's record,
-- which expires when the host stops writing it, and its name in the index
-- of hosts scored by this write; the index forgets hosts not heard of for
-- long and keeps the newest ARGV[5] at most, so that it stays bounded
-- whatever hosts come and go.  One call per host and period.
--
-- KEYS[1]  <prefix>host:<name>
-- KEYS[2]  <prefix>hosts
-- ARGV[1]  the host's name (opamp_server_id)
-- ARGV[2]  now, Unix ms
-- ARGV[3]  the record's life, ms
-- ARGV[4]  how long the index keeps a host not heard of, ms
-- ARGV[5]  how many hosts the index keeps at most
-- ARGV[6..] field, value, ...: the figures
--
-- Returns the number of hosts in the index.

local now, max = tonumber(ARGV[2]), tonumber(ARGV[5])

redis.call('HSET', KEYS[1], unpack(ARGV, 6))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('ZADD', KEYS[2], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf',
           '(' .. (now - tonumber(ARGV[4])))
local n = redis.call('ZCARD', KEYS[2])
if n > max then
    redis.call('ZREMRANGEBYRANK', KEYS[2], 0, n - max - 1)
    n = max
end
return n
