-- admin_audit.lua: a page of the audit log, newest first (docs/admin-api.md,
-- "Audit log").  The module appends to it with XADD ... MAXLEN.
--
-- KEYS[1]  <prefix>audit, a stream
-- ARGV[1]  cursor: the id of the entry to start below ("": the newest)
-- ARGV[2]  how many entries at most (1 to 1,000)
-- ARGV[3]  target the entries must have ("": any)
--
-- At most ten times that many entries are examined, so that a filter
-- costs Redis a bounded time whatever the log holds.
--
-- Returns { next cursor ("" at the end), { id, field, value, ... }, ... }

local limit = tonumber(ARGV[2])
local budget = 10 * limit
local want = ARGV[3]
local out = { '' }
local from = ARGV[1] == '' and '+' or '(' .. ARGV[1]
local last

while budget > 0 and #out - 1 < limit do
    local count = want == '' and (limit - #out + 1) or math.min(budget, 100)
    local batch = redis.call('XREVRANGE', KEYS[1], from, '-', 'COUNT', count)
    for _, e in ipairs(batch) do
        budget = budget - 1
        last = e[1]
        local f, keep = e[2], want == ''
        for i = 1, #f, 2 do
            if f[i] == 'target' then
                keep = keep or f[i + 1] == want
            end
        end
        if keep then
            local entry = { e[1] }
            for i = 1, #f do
                entry[i + 1] = f[i]
            end
            out[#out + 1] = entry
        end
        if #out - 1 == limit or budget == 0 then
            break
        end
    end
    if #batch < count then
        break
    end
    from = '(' .. last
end

-- a cursor only when entries are left below it
if last and #redis.call('XREVRANGE', KEYS[1], '(' .. last, '-',
                        'COUNT', 1) > 0 then
    out[1] = last
end

return out
