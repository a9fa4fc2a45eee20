-- lib/inventory.lua, included after lib/protobuf.lua and
-- lib/attributes.lua: the fleet's inventory, what runs where
-- (docs/redis-schema.md): <prefix>fleet:inventory counts agents by
-- service.version, os.type, the remote config hash they report and each
-- component they carry, moved when an agent reports a change, never by
-- walking the fleet.  As with the gauges (lib/gauges.lua), each agent
-- hash keeps what it counts for (inv_version, inv_os, inv_config: the
-- value; inv_components: the digest of its component list), so that a
-- change moves exactly what the agent counted for before, and removing
-- an agent takes it back; the sweep's recount (inventory_recount) moves
-- what a direct write changed.  Each value is at most 64 bytes, so that
-- the agent hash stays compact.
--
-- A component list is parsed once per fleet: <prefix>fleet:inventory:lists
-- holds, per list digest, its component names (one a line) and, in
-- "#<digest>", how many agents count for it; an agent that moves from
-- one list to another moves the count of each component of both (a new
-- build, a new agent: some hundred HINCRBYs, once).

-- distinct fields of <prefix>fleet:inventory: a value new past it is
-- counted under other:<dimension> ("\1" in the agent's field), so that
-- the hash stays bounded whatever the agents report
local INV_FIELDS = 10000
-- distinct component lists kept (past it an agent counts under
-- other:components), component names read of one list, protobuf fields
-- read of it whoever wrote the bytes, bytes of a value
local INV_LISTS = 256
local INV_COMPONENTS = 512
local INV_READ = 4096
local INV_VALUE = 64

local inv_delta, inv_order = {}, {}

local function inv_add(field, by)
    if not inv_delta[field] then
        inv_order[#inv_order + 1] = field
        inv_delta[field] = 0
    end
    inv_delta[field] = inv_delta[field] + by
end

-- a value as counted: bounded, without control characters
local function inv_value(v)
    return (string.gsub(string.sub(v, 1, INV_VALUE), '%c', '?'))
end

-- the component names of an AvailableComponents message: "<kind>/<name>"
-- of each entry of each top-level entry's sub_component_map (a Collector
-- reports receivers, processors, ... each with its components), or the
-- top-level name alone when it has none; at most INV_COMPONENTS, reading
-- at most INV_READ fields
local function inv_components(pb)
    local out, read, n = {}, 0, #pb
    -- the key (1) and the bounds of the value (2) of a map entry
    local function entry(a, b)
        local k, va, vb
        local i = a
        while i <= b do
            read = read + 1
            if read > INV_READ then
                return nil
            end
            local f, w, x, y, past = next_field(pb, i, b)
            if not f then
                return nil
            end
            if f == 1 and w == 2 then
                k = string.sub(pb, x, y)
            elseif f == 2 and w == 2 then
                va, vb = x, y
            end
            i = past
        end
        return k, va, vb
    end
    local i = 1
    while i <= n and read < INV_READ and #out < INV_COMPONENTS do
        read = read + 1
        local f, w, a, b, past = next_field(pb, i, n)
        if not f then
            break
        end
        if f == 1 and w == 2 then
            local kind, va, vb = entry(a, b)
            if kind then
                local subs = 0
                local j, last = va or 1, vb or 0
                while j <= last and read < INV_READ
                      and #out < INV_COMPONENTS do
                    read = read + 1
                    local sf, sw, sa, sb, spast = next_field(pb, j, last)
                    if not sf then
                        break
                    end
                    if sf == 2 and sw == 2 then
                        local name = entry(sa, sb)
                        if name then
                            out[#out + 1] = inv_value(kind .. '/' .. name)
                            subs = subs + 1
                        end
                    end
                    j = spast
                end
                if subs == 0 and #out < INV_COMPONENTS then
                    out[#out + 1] = inv_value(kind)
                end
            end
        end
        i = past
    end
    return out
end

-- one dimension of an agent from old to new (nil: none); returns what
-- the agent's field holds now (false: nothing), or nil when unchanged
local function inv_move(ikey, dim, old, new)
    if old == new then
        return nil
    end
    if old then
        inv_add(old == '\1' and 'other:' .. dim or dim .. ':' .. old, -1)
    end
    if not new then
        return false
    end
    local field = dim .. ':' .. new
    if redis.call('HEXISTS', ikey, field) == 0
       and redis.call('HLEN', ikey) >= INV_FIELDS
    then
        new, field = '\1', 'other:' .. dim
    end
    inv_add(field, 1)
    return new
end

-- the agent's component list from digest old to new (nil: none); pb the
-- new list's bytes, read only when the fleet has not seen it
local function inv_list_move(ikey, lkey, old, new, pb)
    if old == new then
        return nil
    end
    if old == '\1' then
        inv_add('other:components', -1)
    elseif old then
        local names = redis.call('HGET', lkey, old)
        if names then
            for name in string.gmatch(names, '[^\n]+') do
                inv_add('component:' .. name, -1)
            end
        end
        if redis.call('HINCRBY', lkey, '#' .. old, -1) <= 0 then
            redis.call('HDEL', lkey, old, '#' .. old)
        end
    end
    if not new then
        return false
    end
    local names = redis.call('HGET', lkey, new)
    if not names then
        if redis.call('HLEN', lkey) >= 2 * INV_LISTS or not pb then
            inv_add('other:components', 1)
            return '\1'
        end
        names = table.concat(inv_components(pb), '\n')
        redis.call('HSET', lkey, new, names)
    end
    redis.call('HINCRBY', lkey, '#' .. new, 1)
    for name in string.gmatch(names, '[^\n]+') do
        inv_add('component:' .. name, 1)
    end
    return new
end

local inv_fields = { 'inv_version', 'inv_os', 'inv_config',
                     'inv_components' }

-- the agent's inv_* fields as moved: now[i] the new value, false none,
-- nil unchanged
local function inv_store(k, now)
    local put, gone = {}, {}
    for i = 1, 4 do
        if now[i] then
            put[#put + 1] = inv_fields[i]
            put[#put + 1] = now[i]
        elseif now[i] == false then
            gone[#gone + 1] = inv_fields[i]
        end
    end
    if #put > 0 then
        redis.call('HSET', k, unpack(put))
    end
    if #gone > 0 then
        redis.call('HDEL', k, unpack(gone))
    end
end

-- the agent hash k after a report: desc the description reported (nil:
-- unchanged), comps whether it reported components (their bytes are
-- then read from the shared content, or from stored, its status fields),
-- config the config hash reported (nil: unchanged, "": none); pre the
-- values of inv_fields when the caller read them already (nil: none)
local function inventory_update(pfx, k, desc, comps, stored, config, pre)
    if not desc and not comps and not config then
        return
    end
    local ikey = pfx .. 'fleet:inventory'
    local cur = pre or redis.call('HMGET', k, unpack(inv_fields))
    local now = {}
    if desc then
        local a = attributes_of(desc, { ['service.version'] = true,
                                        ['os.type'] = true,
                                        [15] = true, [7] = true })
        now[1] = inv_move(ikey, 'version', cur[1] or nil,
                          inv_value(a['service.version'] or ''))
        now[2] = inv_move(ikey, 'os', cur[2] or nil,
                          inv_value(a['os.type'] or ''))
    end
    if config then
        now[3] = inv_move(ikey, 'config', cur[3] or nil,
                          config ~= '' and inv_value(config) or nil)
    end
    if comps then
        local ref = redis.call('HGET', k, 'available_components_ref')
        local pb
        if ref then
            pb = redis.call('HGET', pfx .. 'shared:components:' .. ref,
                            'data')
        else
            pb = stored.available_components
            ref = pb and redis.sha1hex(pb)
        end
        now[4] = inv_list_move(ikey, pfx .. 'fleet:inventory:lists',
                               cur[4] or nil, ref and inv_value(ref),
                               pb or nil)
    end
    inv_store(k, now)
end

-- the recount's repair (remove.lua, with the gauges'): the agent hash
-- k's part computed again from what it keeps of its reports (the
-- description and components of its status string skey, its config_hash,
-- its shared components), moving what differs from what its inv_* fields
-- say it counts for.  A direct write to agent hashes or status strings,
-- which no script saw, is so counted right within (fleet / window) sweep
-- steps; deleted inv_* fields (with the inventory) are counted again.
-- Needs lib/protobuf.lua, lib/attributes.lua and lib/status.lua.
local function inventory_recount(pfx, k, skey)
    if redis.call('EXISTS', k) == 0 then
        return
    end
    local ikey = pfx .. 'fleet:inventory'
    local cur = redis.call('HMGET', k, 'inv_version', 'inv_os',
                           'inv_config', 'inv_components', 'config_hash',
                           'available_components_ref')
    local st = status_read(redis.call('GET', skey) or nil)
    local version, os
    if st.description then
        local a = attributes_of(st.description,
                                { ['service.version'] = true,
                                  ['os.type'] = true, [15] = true,
                                  [7] = true })
        version = inv_value(a['service.version'] or '')
        os = inv_value(a['os.type'] or '')
    end
    local now = {}
    now[1] = inv_move(ikey, 'version', cur[1] or nil, version)
    now[2] = inv_move(ikey, 'os', cur[2] or nil, os)
    now[3] = inv_move(ikey, 'config', cur[3] or nil,
                      cur[5] and inv_value(cur[5]) or nil)
    -- the list's bytes are read only when the agent's list differs
    local ref, pb = cur[6] or nil, nil
    if not ref and st.available_components then
        pb = st.available_components
        ref = redis.sha1hex(pb)
    end
    ref = ref and inv_value(ref)
    if ref ~= (cur[4] or nil) and ref and not pb then
        pb = redis.call('HGET', pfx .. 'shared:components:' .. cur[6],
                        'data')
    end
    now[4] = inv_list_move(ikey, pfx .. 'fleet:inventory:lists',
                           cur[4] or nil, ref, pb or nil)
    inv_store(k, now)
end

-- an agent hash goes: what it counted for goes with it
local function inventory_remove(pfx, k)
    local cur = redis.call('HMGET', k, unpack(inv_fields))
    local ikey = pfx .. 'fleet:inventory'
    inv_move(ikey, 'version', cur[1] or nil, nil)
    inv_move(ikey, 'os', cur[2] or nil, nil)
    inv_move(ikey, 'config', cur[3] or nil, nil)
    inv_list_move(ikey, pfx .. 'fleet:inventory:lists', cur[4] or nil, nil)
end

-- the moves of this call, a few HINCRBYs for what many agents moved.  A
-- component new to a hash of INV_FIELDS fields is counted under
-- other:components, and so is its fall when its field is gone: past the
-- bound, components are counted only roughly.
local function inventory_flush(pfx)
    local ikey = pfx .. 'fleet:inventory'
    local size = nil
    for _, field in ipairs(inv_order) do
        local by = inv_delta[field]
        if by ~= 0 and string.sub(field, 1, 10) == 'component:'
           and redis.call('HEXISTS', ikey, field) == 0
        then
            size = size or redis.call('HLEN', ikey)
            if by < 0 or size >= INV_FIELDS then
                field = 'other:components'
            else
                size = size + 1
            end
        end
        if by ~= 0 and redis.call('HINCRBY', ikey, field, by) <= 0 then
            redis.call('HDEL', ikey, field)
        end
    end
    inv_delta, inv_order = {}, {}
end
