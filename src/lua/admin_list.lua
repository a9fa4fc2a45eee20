-- admin_list.lua: one page of the fleet for the admin API, newest
-- last_seen first, filtered inside Redis.  Bounded work per call: at most
-- ARGV[4] index entries are examined, and the page ends after the one
-- whose description brings the protobuf fields read to LIST_FIELDS (16
-- agents at the largest description a worker stores, some 200 real
-- ones); the cursor says where to go on.
--
-- KEYS[1]  <prefix>agents
-- ARGV[1]  key prefix
-- ARGV[2]  now, Unix ms
-- ARGV[3]  cursor: offset into the index ("0" to start)
-- ARGV[4]  how many index entries to examine at most
-- ARGV[5]  page size
-- ARGV[6]  connected filter: "1", "0" or "" (any); live = connected 1 and
--          expires_ms in the future
-- ARGV[7]  healthy filter: "1", "0" or ""
-- ARGV[8]  config_status filter, or ""
-- ARGV[9]  the lowest last_seen_ms a live agent can have (now minus the
--          longest opamp_agent_timeout): with connected "1" the cursor is
--          an offset into the index entries scored from there on, so the
--          departed are never walked
-- ARGV[10] config_hash filter (hex), or ""
-- ARGV[11] component filter "<kind>/<name>", as lib/inventory.lua names
--          them: agents whose component list (inv_components) has it, or
--          ""; each list is read once per call
-- ARGV[12] group filter, or "": the walk is then over the group's
--          members, <prefix>group_members:<name> (lib/gauges.lua), in
--          rank order, the cursor an offset into it, and an agent is
--          listed only while its desired_config is still that group's
-- ARGV[13..] attribute filters "key=value"
--
-- Returns { next cursor ("" at the end), agent, agent, ... } where each
-- agent is the flat list of the fields named in `fields` below
-- (instance_uid from the index, attributes from the description in
-- <prefix>status:{<uid>} and the agent hash's server_attributes, which
-- win, as a JSON object, the others from the agent hash).

--@include lib/protobuf.lua
--@include lib/attributes.lua
--@include lib/status.lua

local prefix, now = ARGV[1], tonumber(ARGV[2])
local cursor, budget, limit = tonumber(ARGV[3]), tonumber(ARGV[4]),
                              tonumber(ARGV[5])

local fields = { 'instance_uid', 'connected', 'expires_ms', 'transport',
                 'server_id', 'worker_pid', 'sequence_num', 'capabilities',
                 'healthy', 'first_seen_ms', 'last_seen_ms', 'attributes',
                 'config_status', 'config_hash', 'desired_config',
                 'desired_hash', 'inv_components' }

local want = {}
for i = 13, #ARGV do
    local k, v = string.match(ARGV[i], '^([^=]+)=(.*)$')
    want[#want + 1] = { k, v }
end

-- component lists read for the component filter: digest -> has it
local lists = {}

local LIST_FIELDS = 8192
local read = 0

local out = { '' }
local group = ARGV[12] ~= '' and 'group:' .. ARGV[12] or nil
local index = group and prefix .. 'group_members:' .. ARGV[12] or KEYS[1]
local live_from = not group and ARGV[6] == '1' and ARGV[9] or nil
local uids
if group then
    uids = redis.call('ZRANGE', index, cursor, cursor + budget - 1)
elseif live_from then
    uids = redis.call('ZREVRANGEBYSCORE', KEYS[1], '+inf', live_from,
                      'LIMIT', cursor, budget)
else
    uids = redis.call('ZREVRANGE', KEYS[1], cursor, cursor + budget - 1)
end
local examined = 0

for _, uid in ipairs(uids) do
    examined = examined + 1
    local key = prefix .. 'agent:{' .. uid .. '}'
    local a = redis.call('HMGET', key, unpack(fields))
    -- the index may name an agent whose hash is gone
    local ok = a[11] ~= false
    a[1] = uid

    if ok and group then
        ok = a[15] == group
    end
    if ok and ARGV[6] ~= '' then
        local live = a[2] == '1' and tonumber(a[3] or '0') > now
        ok = (ARGV[6] == '1') == live
    end
    if ok and ARGV[7] ~= '' then
        ok = a[9] == ARGV[7]
    end
    if ok and ARGV[8] ~= '' then
        ok = (a[13] or 'UNSET') == ARGV[8]
    end
    if ok and ARGV[10] ~= '' then
        ok = a[14] == ARGV[10]
    end
    if ok and ARGV[11] ~= '' then
        local d = a[17]
        local hit = d and lists[d]
        if d and hit == nil then
            local names = redis.call('HGET', prefix .. 'fleet:inventory:lists',
                                     d) or ''
            hit = string.find('\n' .. names .. '\n',
                              '\n' .. ARGV[11] .. '\n', 1, true) ~= nil
            lists[d] = hit
        end
        ok = hit or false
    end
    -- the component list is a filter's, not the page's
    a[17] = nil
    -- the attributes of its description, as selectors see them (a hash
    -- of schema 2 has its description in the agent hash; the status string
    -- holds it first, so only that field is read)
    local attrs = nil
    if ok then
        local desc = status_description(redis.call('GET', prefix
                                               .. 'status:{' .. uid .. '}'))
                     or redis.call('HGET', key, 'description')
        local sa = redis.call('HGET', key, 'server_attributes')
        if desc or sa then
            local n
            attrs, n = attributes_of(desc)
            read = read + n
            -- the server-set ones win, as for selectors
            -- (lib/owed_config.lua)
            if sa then
                local t
                t, n = attributes_of(sa)
                for k, v in pairs(t) do
                    attrs[k] = v
                end
                read = read + n
            end
            a[12] = cjson.encode(attrs)
        end
    end
    if ok and #want > 0 then
        attrs = attrs or {}
        for _, kv in ipairs(want) do
            if attrs[kv[1]] ~= kv[2] then
                ok = false
                break
            end
        end
    end

    if ok then
        for i = 1, #fields do
            if a[i] == false then
                a[i] = ''
            end
        end
        out[#out + 1] = a
        if #out - 1 >= limit then
            break
        end
    end
    if read >= LIST_FIELDS then
        break
    end
end

local next_at = cursor + examined
if examined == #uids and #uids < budget then
    out[1] = ''
elseif next_at >= (live_from
                   and redis.call('ZCOUNT', KEYS[1], live_from, '+inf')
                   or redis.call('ZCARD', index)) then
    out[1] = ''
else
    out[1] = tostring(next_at)
end

return out
