-- lib/versions.lua: a config's history (docs/redis-schema.md, "Config
-- versions"), shared by admin_config_set.lua and admin_version_rollback.lua.
--
-- <prefix>versions:group:<name>, <prefix>versions:agent:{<uid>}: a hash,
-- "last" (the number of the newest version; numbers only grow), "first"
-- (the oldest kept), and per version <n>: "<n>:hash", "<n>:ms",
-- "<n>:author", "<n>:note", "<n>:selector", "<n>:priority" (groups),
-- "<n>:from" (a rollback: the version it put back).
--
-- A version's files are stored once per content, in
-- <prefix>shared:config:<config_hash>, a hash with the config hash's own
-- "file:<name>" and "type:<name>" fields and "versions", how many
-- versions (of any config) name it.  The fleet's effective configs live
-- in the same family of keys, named by a SHA1 (40 hex digits, counted by
-- "refs"), never by a config_hash (64): a key that "refs" still counts is
-- never deleted here all the same.

local function content_key(prefix, hash)
    return prefix .. 'shared:config:' .. hash
end

-- one more version names the content; fields: { 'file:a', body, ... }
local function content_ref(prefix, hash, fields)
    local k = content_key(prefix, hash)
    if redis.call('HINCRBY', k, 'versions', 1) == 1 and #fields > 0 then
        redis.call('HSET', k, unpack(fields))
    end
end

-- one version fewer names it: the last one out deletes it
local function content_unref(prefix, hash)
    local k = content_key(prefix, hash)
    if redis.call('HINCRBY', k, 'versions', -1) > 0 then
        return
    end
    if tonumber(redis.call('HGET', k, 'refs') or '0') > 0 then
        redis.call('HDEL', k, 'versions')
    else
        redis.call('DEL', k)
    end
end

local VERSION_FIELDS = { 'hash', 'ms', 'author', 'note', 'selector',
                         'priority', 'from' }

-- the fields of version n, for HDEL
local function version_fields(n)
    local f = {}
    for i, name in ipairs(VERSION_FIELDS) do
        f[i] = n .. ':' .. name
    end
    return f
end

-- the newest version's record, or nil
local function newest(vkey)
    local last = redis.call('HGET', vkey, 'last')
    if not last then
        return nil
    end
    local v = redis.call('HMGET', vkey, last .. ':hash', last .. ':selector',
                         last .. ':priority')
    if not v[1] then
        return nil
    end
    return { n = tonumber(last), hash = v[1], selector = v[2] or '',
             priority = v[3] or '' }
end

-- a new version: rec = { hash, ms, author, note, selector, priority,
-- from }, fields its files as content_ref() takes them; at most max
-- versions are kept, the oldest go first (bounded: max never exceeds
-- 1,000).  Returns its number.
local function add_version(vkey, prefix, max, rec, fields)
    local n = redis.call('HINCRBY', vkey, 'last', 1)
    local first = tonumber(redis.call('HGET', vkey, 'first') or n)
    local set = {}
    for _, name in ipairs(VERSION_FIELDS) do
        local v = rec[name]
        if v and v ~= '' then
            set[#set + 1] = n .. ':' .. name
            set[#set + 1] = v
        end
    end
    redis.call('HSET', vkey, unpack(set))
    content_ref(prefix, rec.hash, fields)
    while n - first + 1 > max do
        local h = redis.call('HGET', vkey, first .. ':hash')
        redis.call('HDEL', vkey, unpack(version_fields(first)))
        if h then
            content_unref(prefix, h)
        end
        first = first + 1
    end
    redis.call('HSET', vkey, 'first', first)
    return n
end

-- version n as { n, hash, ms, author, note, selector, priority, from }
-- ('' for what it has not), or nil
local function version_record(vkey, n)
    local v = redis.call('HMGET', vkey, unpack(version_fields(n)))
    if not v[1] then
        return nil
    end
    local r = { tostring(n) }
    for i = 1, #VERSION_FIELDS do
        r[i + 1] = v[i] or ''
    end
    return r
end

-- the files of a content: { name, content type, body, ... } and its
-- fields as content_ref() takes them
local function content_files(prefix, hash)
    local all = redis.call('HGETALL', content_key(prefix, hash))
    local names, bodies, types, fields = {}, {}, {}, {}
    for i = 1, #all, 2 do
        local f, p = all[i], string.sub(all[i], 1, 5)
        if p == 'file:' then
            names[#names + 1] = string.sub(f, 6)
            bodies[string.sub(f, 6)] = all[i + 1]
        elseif p == 'type:' then
            types[string.sub(f, 6)] = all[i + 1]
        end
        if p == 'file:' or p == 'type:' then
            fields[#fields + 1] = f
            fields[#fields + 1] = all[i + 1]
        end
    end
    local out = {}
    for _, name in ipairs(names) do
        out[#out + 1] = name
        out[#out + 1] = types[name] or ''
        out[#out + 1] = bodies[name]
    end
    return out, fields
end

-- the files of a request, ARGV[first..] as triples (name, body, content
-- type), as the config's fields: { 'file:a', body, 'type:a', type, ... }
local function argv_files(first)
    local fields = {}
    for i = first, #ARGV, 3 do
        fields[#fields + 1] = 'file:' .. ARGV[i]
        fields[#fields + 1] = ARGV[i + 1]
        if ARGV[i + 2] ~= '' then
            fields[#fields + 1] = 'type:' .. ARGV[i]
            fields[#fields + 1] = ARGV[i + 2]
        end
    end
    return fields
end
