-- lib/groups.lua, included by lib/owed_config.lua's users (report.lua,
-- check.lua) and by fanout.lua: the groups in the order of precedence
-- (docs/redis-schema.md, "Precedence"): higher priority first, equal
-- priorities by name, bytewise.

-- { { name, priority }, ... } of the sorted set gkey (<prefix>groups)
local function groups_by_precedence(gkey)
    local g = redis.call('ZRANGE', gkey, 0, -1, 'WITHSCORES')
    local list = {}
    for i = 1, #g, 2 do
        list[#list + 1] = { g[i], tonumber(g[i + 1]) }
    end
    table.sort(list, function(a, b)
        if a[2] ~= b[2] then
            return a[2] > b[2]
        end
        return a[1] < b[1]
    end)
    return list
end
