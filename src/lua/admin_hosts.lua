-- admin_hosts.lua: GET hosts of the admin API, the nginx hosts that
-- publish their own figures (host.lua), newest publish first, at most
-- ARGV[2]; a host whose record expired (it stopped publishing) comes
-- with no figures.
--
-- KEYS[1]  <prefix>hosts
-- ARGV[1]  key prefix
-- ARGV[2]  how many hosts at most
--
-- Returns { name, last publish (Unix ms), { field, value, ... } } a host.

local out = {}
local list = redis.call('ZREVRANGE', KEYS[1], 0, tonumber(ARGV[2]) - 1,
                        'WITHSCORES')
for i = 1, #list, 2 do
    out[#out + 1] = { list[i], list[i + 1],
                      redis.call('HGETALL', ARGV[1] .. 'host:' .. list[i]) }
end
return out
