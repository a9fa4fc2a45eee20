-- admin_groups.lua: every group with its selector, priority, hash and
-- file names, highest priority first.
--
-- KEYS[1]  <prefix>groups
-- ARGV[1]  key prefix
--
-- Returns { { name, selector, priority, hash, updated_ms, file names... },
--           ... }

local out = {}
local g = redis.call('ZREVRANGE', KEYS[1], 0, -1)

for _, name in ipairs(g) do
    local key = ARGV[1] .. 'config:group:' .. name
    local h = redis.call('HMGET', key, 'selector', 'priority', 'hash',
                         'updated_ms')
    local e = { name, h[1] or '', h[2] or '0', h[3] or '', h[4] or '' }
    for _, f in ipairs(redis.call('HKEYS', key)) do
        if string.sub(f, 1, 5) == 'file:' then
            e[#e + 1] = string.sub(f, 6)
        end
    end
    out[#out + 1] = e
end

return out
