-- lib/owed.lua, included after lib/state.lua and lib/caps.lua by
-- report.lua and check.lua: what else than a config an agent is owed:
-- a command, a custom message, connection settings, packages.  Reads
-- prefix, now_text, timeout, cs_offer and the agent (key, uid) of
-- lib/state.lua, and sets its pending.

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

-- ConnectionSettingsOffers: the module's own part (the OpAMP heartbeat,
-- hashed in cs_offer) and what an operator stored for the agent or the
-- fleet; offered when it changed since the last offer, on full state,
-- and to an agent process that started again (renew).  An agent that
-- reports heartbeats (ReportsHeartbeat, 8192) is told the interval even
-- when it accepts no settings (the session leaves the rest out).
local fleet_settings = nil

local function owed_settings(set, caps, stored_hash, renew)
    local heartbeat = bit(caps, 8192)
    -- none of the bits 32 to 512
    if caps_number(caps) % 1024 < 32 and not heartbeat then
        return 0, '', ''
    end
    local other = bit(caps, 32) or bit(caps, 64) or bit(caps, 128)
                  or bit(caps, 512)
    if not bit(caps, 256) and not other and not heartbeat then
        return 0, '', ''
    end
    local extra = ''
    if bit(caps, 256) or other then
        extra = redis.call('GET', prefix .. 'connection_settings:{'
                                  .. uid .. '}')
        if not extra then
            fleet_settings = fleet_settings
                             or redis.call('GET',
                                           prefix .. 'connection_settings')
                             or ''
            extra = fleet_settings
        end
    end
    local wants = bit(caps, 256) or heartbeat
                  or (extra ~= '' and other)
    if not wants then
        return 0, '', ''
    end
    local h = cs_offer
    if extra ~= '' then
        h = redis.sha1hex(cs_offer .. extra)
    end
    if stored_hash == h and not renew then
        return 0, '', ''
    end
    set[#set + 1] = 'cs_hash'
    set[#set + 1] = h
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
        pending = true
        return ''
    end
    set[#set + 1] = 'offered_packages_hash'
    set[#set + 1] = pk[1]
    set[#set + 1] = 'offered_packages_ms'
    set[#set + 1] = now_text
    return pk[2]
end
