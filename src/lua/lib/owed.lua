-- lib/owed.lua, included after lib/state.lua and lib/caps.lua by
-- report.lua and check.lua: what else than a config an agent is owed:
-- a command, a custom message, connection settings, packages.  Reads
-- prefix, now_text, now, timeout, cs_offer and the agent (key, uid) of
-- lib/state.lua, and sets its pending; next_field() of lib/protobuf.lua.

-- a pending command, taken once delivered; only for agents that accept it
local function owed_command(caps)
    if not bit(caps, 1024) then
        return ''
    end
    local c = redis.call('GETDEL', prefix .. 'command:{' .. uid .. '}')
    return c or ''
end

-- the oldest queued message for a custom capability the agent has
-- (an entry is "<capability>\n<type>\n<data>"); one per ServerToAgent
local no_message = {}

local function owed_message(names)
    if not names or names == '' then
        return no_message
    end
    local outbox = prefix .. 'outbox:{' .. uid .. '}'
    local have = {}
    for n in string.gmatch(names, '[^\n]+') do
        have[n] = true
    end
    local queued = redis.call('LRANGE', outbox, 0, 99)
    for _, e in ipairs(queued) do
        local cap, typ, data = string.match(e, '^([^\n]*)\n([^\n]*)\n(.*)$')
        if cap and have[cap] then
            redis.call('LREM', outbox, 1, e)
            return { cap, typ, data }
        end
    end
    return {}
end

-- ConnectionSettingsOffers (docs/redis-schema.md): what an operator
-- stored for the agent, or else for the fleet, as far as the agent's
-- capabilities accept it, and the module's own part, the heartbeat
-- interval (hashed in cs_offer), which travels inside an opamp part.
-- Offered once per agent and content: when the offer's hash differs from
-- the one last offered (cs_hash), never because the agent restarted,
-- reconnected or was asked for its full state (an agent that accepts
-- OpAMP settings reconnects for each offer, and comes back counting from
-- 0).  Again only when the agent reported that it did not apply the
-- last one (cs_again: ConnectionSettingsStatus FAILED, or another hash),
-- and then at most once per opamp_agent_timeout, so that an agent that
-- keeps failing is not kept reconnecting.
local fleet_settings = nil

-- the capability bit of each part, by field number: opamp,
-- own_metrics, own_traces, own_logs, other_connections
local part_caps = { [2] = 256, [3] = 64, [4] = 32, [5] = 128, [6] = 512 }

-- whether the OpAMPConnectionSettings in pb[a..b] has a
-- destination_endpoint (its field 1, not empty)
local function has_endpoint(pb, a, b)
    local i = a
    while i <= b do
        local f, w, x, y, past = next_field(pb, i, b)
        if not f then
            return false
        end
        if f == 1 and w == 2 and y >= x then
            return true
        end
        i = past
    end
    return false
end

-- the bytes of a stored ConnectionSettingsOffers that the agent gets:
-- the parts of its capabilities, opamp only with a destination_endpoint
-- (the spec: it MUST be non-empty; the supervisor refuses an offer
-- without one), preceded by the stored hash field (1), which the admin
-- API renews at every PUT, so that a PUT offers them again; and whether
-- they hold the opamp part.  Nothing of a malformed message.
local function settings_parts(pb, caps)
    local out, head, opamp, i, n = {}, '', false, 1, #pb
    while i <= n do
        local f, w, a, b, past = next_field(pb, i, n)
        if not f then
            return '', false
        end
        if w == 2 and f == 1 then
            head = string.sub(pb, i, past - 1)
        elseif w == 2 and part_caps[f] and bit(caps, part_caps[f])
               and (f ~= 2 or has_endpoint(pb, a, b))
        then
            out[#out + 1] = string.sub(pb, i, past - 1)
            opamp = opamp or f == 2
        end
        i = past
    end
    if #out == 0 then
        return '', false
    end
    return head .. table.concat(out), opamp
end

-- whether the agent is owed connection settings (1 or 0), the parts it
-- gets (protobuf) and the offer's hash; stored_hash, again and
-- offered_ms are its cs_hash, cs_again and cs_offered_ms.  An agent that
-- reports heartbeats (ReportsHeartbeat, 8192) and accepts no OpAMP
-- settings is told the interval in an opamp part of its own (opamp-go
-- reads the interval of such an agent and nothing else); one that
-- accepts them gets the interval only in an operator's opamp part.
local function owed_settings(set, caps, stored_hash, again, offered_ms)
    local heartbeat = bit(caps, 8192) and not bit(caps, 256)
    -- none of the bits 32 to 512
    local parts_caps = caps_number(caps) % 1024 >= 32
    if not parts_caps and not heartbeat then
        return 0, '', ''
    end
    local extra, opamp = '', false
    if parts_caps then
        local stored = redis.call('GET', prefix .. 'connection_settings:{'
                                         .. uid .. '}')
        if not stored then
            fleet_settings = fleet_settings
                             or redis.call('GET',
                                           prefix .. 'connection_settings')
                             or ''
            stored = fleet_settings
        end
        extra, opamp = settings_parts(stored, caps)
    end
    if extra == '' and not heartbeat then
        return 0, '', ''
    end
    -- an agent with a token (or one on its way) that accepts OpAMP
    -- settings must find a token it can use in them: without one to give
    -- (check.lua's pushes), they wait for its next message, which the
    -- emptied settled sends the long way (report.lua makes one)
    offer_opamp = opamp
    if opamp and token_agent and not mint then
        set[#set + 1] = 'settled'
        set[#set + 1] = ''
        return 0, '', ''
    end
    local h = ''
    if opamp or heartbeat then
        h = cs_offer
    end
    if extra ~= '' then
        h = redis.sha1hex(h .. extra)
    end
    if stored_hash == h then
        if again ~= '1' then
            return 0, '', ''
        end
        if now - tonumber(offered_ms or '0') < timeout then
            pending = math.min(pending or math.huge,
                               tonumber(offered_ms or '0') + timeout)
            return 0, '', ''
        end
    end
    set[#set + 1] = 'cs_hash'
    set[#set + 1] = h
    set[#set + 1] = 'cs_offered_ms'
    set[#set + 1] = now_text
    set[#set + 1] = 'cs_again'
    set[#set + 1] = ''
    return 1, extra, h
end

-- PackagesAvailable for agents that accept packages, until the agent
-- reports the same all_packages_hash (sent: the one the message reports,
-- nil when it carries no package_statuses)
local function owed_packages(set, caps, force, now, sent)
    if not bit(caps, 8) then
        return ''
    end
    local pk = redis.call('HMGET', prefix .. 'packages:{' .. uid .. '}',
                          'hash', 'offer')
    if not pk[1] then
        pk = redis.call('HMGET', prefix .. 'packages', 'hash', 'offer')
    end
    if not pk[1] or not pk[2] then
        return ''
    end
    local c = redis.call('HMGET', key, 'packages_hash',
                         'offered_packages_hash', 'offered_packages_ms')
    local reported = c[1] or ''
    if sent then
        reported = sent
    end
    if pk[1] == reported then
        return ''
    end
    if not force and pk[1] == c[2]
       and now - tonumber(c[3] or '0') < timeout
    then
        pending = math.min(pending or math.huge,
                           tonumber(c[3] or '0') + timeout)
        return ''
    end
    set[#set + 1] = 'offered_packages_hash'
    set[#set + 1] = pk[1]
    set[#set + 1] = 'offered_packages_ms'
    set[#set + 1] = now_text
    return pk[2]
end
