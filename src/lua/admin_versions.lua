-- admin_versions.lua: read a config's history (docs/admin-api.md, "Config
-- versions"), or remove the history of a config that is gone.
--
-- KEYS[1]  <prefix>versions:agent:{<uid>} or <prefix>versions:group:<name>
-- KEYS[2]  the config hash (<prefix>config:agent:{<uid>} or
--          <prefix>config:group:<name>)
-- ARGV[1]  key prefix
-- ARGV[2]  "list", "show", "diff" or "purge"
-- "list":  ARGV[3] the version to start below ("": the newest), ARGV[4]
--          how many at most (1 to 1,000)
--          returns { first, last, record, record, ... } newest first
-- "show":  ARGV[3] the version
--          returns { record, { name, content type, body, ... } } or {}
-- "diff":  ARGV[3], ARGV[4] the two versions ("" for the second: the
--          newest)
--          returns { record, files, record, files } or {}
-- "purge": returns -1 while the config exists (its history is its
--          rollback), 0 when it has none, else 1
--
-- A record is { n, hash, ms, author, note, selector, priority, from }.

--@include lib/versions.lua

local vkey, prefix, mode = KEYS[1], ARGV[1], ARGV[2]

local first = tonumber(redis.call('HGET', vkey, 'first') or '0')
local last = tonumber(redis.call('HGET', vkey, 'last') or '0')

if mode == 'list' then
    local out = { first, last }
    local from = last
    if ARGV[3] ~= '' then
        from = math.min(last, tonumber(ARGV[3]) - 1)
    end
    local limit = tonumber(ARGV[4])
    local n = from
    while n >= first and n >= 1 and #out - 2 < limit do
        local r = version_record(vkey, n)
        if r then
            out[#out + 1] = r
        end
        n = n - 1
    end
    return out
end

if mode == 'show' or mode == 'diff' then
    local out = {}
    local want = { ARGV[3] }
    if mode == 'diff' then
        want[2] = ARGV[4] ~= '' and ARGV[4] or tostring(last)
    end
    for _, n in ipairs(want) do
        local r = version_record(vkey, n)
        if not r then
            return {}
        end
        out[#out + 1] = r
        out[#out + 1] = (content_files(prefix, r[2]))
    end
    return out
end

if mode == 'purge' then
    if redis.call('EXISTS', KEYS[2]) == 1 then
        return -1
    end
    if last == 0 then
        return 0
    end
    for n = first, last do
        local h = redis.call('HGET', vkey, n .. ':hash')
        if h then
            content_unref(prefix, h)
        end
    end
    redis.call('DEL', vkey)
    return 1
end

return redis.error_reply('unknown mode')
