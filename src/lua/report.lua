-- report.lua: persist one AgentToServer status report and say what the
-- server owes the agent.  One call per message.  The layout is
-- docs/redis-schema.md.
--
-- KEYS[1]  <prefix>agent:{<uid>}
-- KEYS[2]  <prefix>config:agent:{<uid>}
-- KEYS[3]  <prefix>config_version
-- KEYS[4]  <prefix>groups
-- KEYS[5]  <prefix>status:{<uid>}
-- ARGV[1]  now, Unix ms
-- ARGV[2]  instance uid, canonical text
-- ARGV[3]  sequence_num, decimal
-- ARGV[4]  sequence_num - 1, decimal ("" when sequence_num is 0)
-- ARGV[5]  capabilities, decimal
-- ARGV[6]  connection id "<server_id>:<pid>:<n>", or "http"
-- ARGV[7]  transport, "websocket" or "http"
-- ARGV[8]  server_id
-- ARGV[9]  worker pid
-- ARGV[10] pub/sub channel of the worker
-- ARGV[11] opamp_agent_timeout, ms
-- ARGV[12] "1" when this is the first message of the connection
-- ARGV[13] "1" when the message carries agent_disconnect
-- ARGV[14] healthy of the reported health: "1", "0", or "" (not reported)
-- ARGV[15] hash of the module's own part of the connection settings
--          offer (the OpAMP heartbeat interval), hex
-- ARGV[16] presence mask of the status fields below (bit 0: ARGV[17])
-- ARGV[17..24] description, health, effective_config,
--          remote_config_status, package_statuses, custom_capabilities,
--          available_components, connection_settings_status (protobuf)
-- ARGV[25] key prefix (for the group keys <prefix>config:group:<name>)
-- ARGV[26] "report", or "check": only say which config the agent is owed
--          (after a config change), storing nothing of a message, or
--          "beats": heartbeats of many agents (see below)
-- ARGV[27] remote_config_status.status name; "" when not reported
-- ARGV[28] remote_config_status.error_message
-- ARGV[29] remote_config_status.last_remote_config_hash, hex
-- ARGV[30] "1": send the owed config even if it was offered before
-- ARGV[31] custom capabilities reported: "" when not reported, else "+"
--          and the capability names, one per line
-- ARGV[32] custom_message of the agent: capability ("" when none)
-- ARGV[33] its type
-- ARGV[34] its data
-- ARGV[35] package_statuses.server_provided_all_packages_hash reported:
--          "" when no package_statuses, else "+" and the hash in hex
-- ARGV[36] opamp_max_agent_state, bytes: the status fields the agent
--          keeps (those it sends now, and those it does not as stored)
--          may not exceed it ("" in the batch modes)
--
-- In "check" mode the script looks at many connected agents at once
-- (all of a worker's, in batches, after a config change): ARGV[37..]
-- are pairs of instance uid and connection id; KEYS[1], KEYS[2],
-- ARGV[2] and ARGV[6] are unused.  It returns
--   { { { index (1-based pair), then elements 5 to 13 of a report's
--         answer below, but the owed config's key in place of its
--         fields }, ... only agents owed something; agents owed the same
--         config and nothing else share one entry whose first element
--         is the array of their indexes },
--     { config key, its fields (HGETALL), ... once per owed key } }
--
-- Returns { full_state (0/1), verdict (0 ok, 1 takeover, 2 duplicate,
--           3 over opamp_max_agent_state),
--           holder channel, holder conn, offer connection settings (0/1),
--           owed config hash (hex, "" for none),
--           the owed config's hash fields (HGETALL) or an empty array,
--           ask for available components (0/1),
--           command owed ("restart" or ""),
--           custom message owed { capability, type, data } or {},
--           stored ConnectionSettingsOffers to merge into the offer
--           (protobuf, "" for none), the offer's hash (hex),
--           PackagesAvailable owed (protobuf, "" for none) }

--@include lib/protobuf.lua
--@include lib/attributes.lua
--@include lib/status.lua

-- the layout version of the agent hash (docs/redis-schema.md); the
-- worker's digest of a beat_mark() says the same
local SCHEMA = '3'

-- the agent the functions below look at: one per call, or each agent of
-- a check batch in turn: its hash of small fields (key), its own config
-- (acfg) and its status fields as the agent reported them (skey)
local key, acfg, skey, uid = KEYS[1], KEYS[2], KEYS[5], ARGV[2]

-- the agent's stored status fields (lib/status.lua), read when first
-- needed; status_changed: to be written back at the end
local status_t, status_changed = nil, false

local function stored_status()
    if not status_t then
        status_t = status_read(redis.call('GET', skey))
    end
    return status_t
end
local now = tonumber(ARGV[1])
local seq, prev_seq = ARGV[3], ARGV[4]
local conn, transport = ARGV[6], ARGV[7]
local first, disconnect = ARGV[12] == '1', ARGV[13] == '1'
local mask = tonumber(ARGV[16])
local mask_all = mask
local prefix = ARGV[25]

-- The common message of a fleet: a heartbeat in sequence on the same
-- connection from an agent that is owed nothing and has no offer out,
-- with nothing changed since that was found.  Only its sequence and
-- liveness are stored.  What a control plane writes without the admin
-- API is still seen: configs with INCR config_version (in the mark, see
-- settle_mark() below), commands and messages for the agent by their
-- keys; agents that accept connection settings or packages
-- (AcceptsPackages, ReportsOwn*, Accepts*ConnectionSettings, bits 8 and
-- 32 to 512) always take the long way, which reads the offers for the
-- agent and the fleet.  First thing in the script, before the functions
-- below are even made.
local short_fields = { 'sequence_num', 'settled', 'connected',
                       'expires_ms', 'conn', 'transport', 'channel',
                       'cs_hash', 'first_seen_ms', 'schema' }
local vmark = nil

-- no connection settings or packages to look for (bits 8, 32 to 512)
local function can_settle(caps)
    return bit.band((tonumber(caps) or 0) % 65536, 1000) == 0
end

-- what a heartbeat must match in the agent's "settled" to take the short
-- way, but for the config_version in front: its capabilities, the
-- module's settings hash, and the connection, transport and worker
-- channel it came on (another connection, or a disconnect, which clears
-- "settled", take the long way), and the layout version (an agent settled
-- under an older one takes the long way once, which moves it).  Digested to 16 hex digits of their SHA1
-- so that the field stays short: an agent hash whose values all fit in
-- 64 bytes is stored compactly by Redis (hash-max-listpack-value).  The
-- worker digests the same text for a batch.
local function beat_mark(caps, cs, cn, tr)
    return string.sub(redis.sha1hex(caps .. ' ' .. cs .. ' ' .. cn .. ' '
                                    .. tr .. ' ' .. ARGV[10] .. ' '
                                    .. SCHEMA), 1, 16)
end

-- takes the short way if the heartbeat can (true): k the agent's key, u
-- its uid, sq and prev its sequence_num and the one before, stored its
-- stored sequence_num and settled, mark its beat_mark(), restart whether
-- it accepts a restart command, expires its new expires_ms; members: the
-- fleet index entries to add, or nil to add this one at once
local function short_way(k, u, sq, prev, stored, mark, restart, expires,
                         members)
    if not (stored[1] == prev and stored[2]) then
        return false
    end
    vmark = vmark or ((redis.call('GET', KEYS[3]) or '0') .. ' ')
    if stored[2] ~= vmark .. mark then
        return false
    end
    -- a command or message for the agent; connection settings and
    -- packages are not for agents that can settle
    local waiting
    if restart then
        waiting = redis.call('EXISTS', prefix .. 'command:{' .. u .. '}',
                             prefix .. 'outbox:{' .. u .. '}')
    else
        waiting = redis.call('EXISTS', prefix .. 'outbox:{' .. u .. '}')
    end
    if waiting ~= 0 then
        return false
    end
    redis.call('HSET', k, 'sequence_num', sq, 'last_seen_ms', ARGV[1],
               'expires_ms', expires)
    if members then
        members[#members + 1] = ARGV[1]
        members[#members + 1] = u
    else
        redis.call('ZADD', prefix .. 'agents', ARGV[1], u)
    end
    return true
end

-- "beats": the heartbeats a worker received in one turn of its event
-- loop, from agents that can settle, ARGV[37..] six per agent: instance
-- uid, sequence_num, sequence_num - 1, its beat_mark() (digested by the
-- worker), "1" if it accepts restart (AcceptsRestartCommand) else "",
-- and its expires_ms.
-- Returns { 1 or 0, ... }: 1 for each that took the short way; the
-- worker sends the others again, one report each.
if ARGV[26] == 'beats' then
    local out, members = {}, {}
    for i = 37, #ARGV - 5, 6 do
        local u = ARGV[i]
        local k = prefix .. 'agent:{' .. u .. '}'
        out[#out + 1] = short_way(k, u, ARGV[i + 1], ARGV[i + 2],
                                  redis.call('HMGET', k, 'sequence_num',
                                             'settled'),
                                  ARGV[i + 3], ARGV[i + 4] == '1',
                                  ARGV[i + 5], members)
                        and 1 or 0
    end
    if #members > 0 then
        redis.call('ZADD', prefix .. 'agents', unpack(members))
    end
    return out
end

local cur = nil
if ARGV[26] == 'report' then
    cur = redis.call('HMGET', key, unpack(short_fields))
end

if cur and mask == 0 and not disconnect
   and ARGV[14] == '' and ARGV[27] == ''
   and ARGV[30] ~= '1' and ARGV[31] == '' and ARGV[32] == ''
   and ARGV[35] == '' and can_settle(ARGV[5])
   and short_way(key, uid, seq, prev_seq, cur,
                 beat_mark(ARGV[5], ARGV[15], conn, transport),
                 math.floor((tonumber(ARGV[5]) or 0) / 1024) % 2 == 1,
                 tostring(now + tonumber(ARGV[11])), nil)
then
    return { 0, 0, cur[7], cur[5], 0, '', {}, 0, '', {}, '', '', '' }
end

local fields = { 'description', 'health', 'effective_config',
                 'remote_config_status', 'package_statuses',
                 'custom_capabilities', 'available_components',
                 'connection_settings_status' }

-- the fields that may be shared content (see refer() below), their kind
local shared_kinds = { [3] = 'config', [7] = 'components' }

-- decimal strings without leading zeros: compare as numbers would, but
-- without Lua's 53-bit doubles losing 64-bit sequence numbers
local function less(a, b)
    return #a < #b or (#a == #b and a < b)
end


-- whether capability bit b (a power of two) is set; the text of the
-- capabilities is parsed once per agent, not once per bit
local caps_text, caps_n = nil, 0

local function caps_number(caps)
    if caps ~= caps_text then
        caps_text, caps_n = caps, tonumber(caps or '0') or 0
    end
    return caps_n
end

local function bit(caps, b)
    return math.floor(caps_number(caps) / b) % 2 == 1
end

-- AgentCapabilities.AcceptsRemoteConfig
local function accepts_config(caps)
    return caps and bit(caps, 2)
end

-- the agent's own config key, made only when it is needed
local function agent_config_key()
    acfg = acfg or prefix .. 'config:agent:{' .. uid .. '}'
    return acfg
end

-- "k=v,k2=v2" as { k, v, k2, v2 }, or false when a pair has no key
local function parse_selector(selector)
    local t = {}
    for pair in string.gmatch(selector or '', '[^,]+') do
        local k, v = string.match(pair, '^([^=]+)=(.*)$')
        if not k then
            return false
        end
        t[#t + 1] = k
        t[#t + 1] = v
    end
    return t
end

-- every key of the parsed selector must be an attribute with exactly
-- that value
local function matches(sel, attrs)
    if not sel then
        return false
    end
    for i = 1, #sel, 2 do
        if attrs[sel[i]] ~= sel[i + 1] then
            return false
        end
    end
    return true
end

-- precedence: the agent's own config, then the group of highest priority
-- whose selector matches, equal priorities by name
-- the groups by precedence, with selector and hash: read once per call,
-- however many agents a check batch resolves
local groups = nil

local function load_groups()
    local g = redis.call('ZREVRANGE', KEYS[4], 0, -1, 'WITHSCORES')
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
    for _, e in ipairs(list) do
        local r = redis.call('HMGET', prefix .. 'config:group:' .. e[1],
                             'selector', 'hash')
        e[3], e[4] = parse_selector(r[1]), r[2]
    end
    return list
end

-- false when a check batch found that none of its agents has its own
-- config (one EXISTS for all instead of one HGET each)
local own_configs = true

local function resolve(attrs)
    local h = own_configs and redis.call('HGET', agent_config_key(), 'hash')
    if h then
        return 'agent', h
    end
    groups = groups or load_groups()
    for _, e in ipairs(groups) do
        if e[4] and matches(e[3], attrs) then
            return 'group:' .. e[1], e[4]
        end
    end
    return '', ''
end

-- the fields of a config hash, read once per call
local files_of = {}

local function config_files(ckey)
    local f = files_of[ckey]
    if not f then
        f = redis.call('HGETALL', ckey)
        files_of[ckey] = f
    end
    return f
end

local version = nil

-- an offer is out and not yet acknowledged: it may be owed again later
local pending = false

-- what a settled agent's state depends on besides its own hash: any
-- change of configs or offers (the admin API increments config_version,
-- or clears the agent's "settled"), its capabilities, and the module's
-- part of the connection settings
local function settle_mark()
    version = version or redis.call('GET', KEYS[3]) or '0'
    return version .. ' ' .. beat_mark(ARGV[5], ARGV[15], conn, transport)
end

-- what the last change of configs concerns, when the admin API could
-- tell: "<config_version> <scope>" in <prefix>config_version_scope, where
-- scope is "none" (no config changed), "agent:<uid>" (that agent's own
-- config), "group:<name>" (that group's files, same selector and
-- priority) or "all".  Only the change to the current version counts, so
-- a writer that increments config_version without it is never misread.
local scope = nil

-- whether an agent whose config was resolved at agent_version may keep
-- its desired config: the one change since then moved no agent between
-- configs, except maybe another agent to or from its own config
local function read_scope()
    if scope == nil then
        version = version or redis.call('GET', KEYS[3]) or '0'
        local v, sc = string.match(redis.call('GET', KEYS[3] .. '_scope')
                                   or '', '^(%d+) (.+)$')
        local kind, who = string.match(sc or '', '^(%a+):(.+)$')
        scope = { v, sc, kind, who, v and tostring(tonumber(v) - 1) }
        -- whether agents resolved just before the change keep theirs
        scope.narrow = v == version and (sc == 'none' or kind == 'group'
                                         or kind == 'agent')
    end
    return scope
end

local function keeps_desired(agent_version)
    read_scope()
    if scope[1] ~= version or agent_version ~= scope[5] then
        return false
    end
    local kind = scope[3]
    return scope[2] == 'none' or kind == 'group'
           or (kind == 'agent' and scope[4] ~= uid)
end

-- the current hash of a group, read once per call
local group_hash = {}

-- the key of a desired "group:<name>"
local group_key = {}

local function hash_of_group(name)
    local h = group_hash[name]
    if h == nil then
        h = redis.call('HGET', prefix .. 'config:group:' .. name, 'hash')
              or false
        group_hash[name] = h
    end
    return h
end

-- which config the agent is owed now (hash, fields, key), appending what
-- to remember to set
-- (pre: those fields, when the caller read them already)
local config_fields = { 'config_version', 'desired_config', 'desired_hash',
                        'offered_hash', 'offered_ms', 'config_hash' }

-- (desc: the description the message carries, else "")
local function owed_config(set, caps, desc, reported, force, now, pre)
    if not accepts_config(caps) then
        return '', {}, ''
    end

    version = version or redis.call('GET', KEYS[3]) or '0'
    local c = pre or redis.call('HMGET', key, unpack(config_fields))
    local desired, dhash = c[2] or '', c[3] or ''

    local moved = c[1] ~= version or desc ~= ''

    if moved and desc == '' and keeps_desired(c[1]) then
        moved = false
        if desired == scope[2] then
            -- the agent's group changed its files: only the hash moves
            local h = hash_of_group(string.sub(desired, 7))
            if h then
                dhash = h
                set[#set + 1] = 'desired_hash'
                set[#set + 1] = dhash
            else
                moved = true
            end
        end
        if not moved then
            set[#set + 1] = 'config_version'
            set[#set + 1] = version
        end
    end

    if moved then
        if desc == '' then
            -- an agent not yet moved to this layout has it in its hash
            desc = stored_status().description
                   or redis.call('HGET', key, 'description') or ''
        end
        desired, dhash = resolve(attributes_of(desc))
        set[#set + 1] = 'desired_config'
        set[#set + 1] = desired
        set[#set + 1] = 'desired_hash'
        set[#set + 1] = dhash
        set[#set + 1] = 'config_version'
        set[#set + 1] = version
    end

    if reported == nil then
        reported = c[6] or ''
    end

    if dhash == '' or dhash == reported then
        return '', {}, ''
    end

    -- offered already and not lost on the way: the agent is applying it
    if not force and dhash == c[4]
       and now - tonumber(c[5] or '0') < tonumber(ARGV[11])
    then
        pending = true
        return '', {}, ''
    end

    local ckey = group_key[desired]
    if desired == 'agent' then
        ckey = agent_config_key()
    elseif not ckey then
        ckey = prefix .. 'config:group:' .. string.sub(desired, 7)
        group_key[desired] = ckey
    end

    local files = config_files(ckey)
    if #files == 0 then
        return '', {}, ''
    end

    set[#set + 1] = 'offered_hash'
    set[#set + 1] = dhash
    set[#set + 1] = 'offered_ms'
    set[#set + 1] = ARGV[1]

    return dhash, files, ckey
end

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
-- hashed in ARGV[15]) and what an operator stored for the agent or the
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
    local h = ARGV[15]
    if extra ~= '' then
        h = redis.sha1hex(ARGV[15] .. extra)
    end
    if stored_hash == h and not renew then
        return 0, '', ''
    end
    set[#set + 1] = 'cs_hash'
    set[#set + 1] = h
    return 1, extra, h
end

-- PackagesAvailable for agents that accept packages, until the agent
-- reports the same all_packages_hash
local function owed_packages(set, caps, force, now)
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
    if ARGV[35] ~= '' then
        reported = string.sub(ARGV[35], 2)
    end
    if pk[1] == reported then
        return ''
    end
    if not force and pk[1] == c[2]
       and now - tonumber(c[3] or '0') < tonumber(ARGV[11])
    then
        pending = true
        return ''
    end
    set[#set + 1] = 'offered_packages_hash'
    set[#set + 1] = pk[1]
    set[#set + 1] = 'offered_packages_ms'
    set[#set + 1] = ARGV[1]
    return pk[2]
end

-- a config or group changed: what do these connected agents need now?
if ARGV[26] == 'check' then
    local force = ARGV[30] == '1'
    local out, owed_keys, same = {}, {}, {}
    local check_fields = { unpack(config_fields) }
    for _, f in ipairs({ 'capabilities', 'conn', 'connected',
                         'custom_capability_names', 'cs_hash' }) do
        check_fields[#check_fields + 1] = f
    end
    -- after a change that makes agents be matched again, their own
    -- configs are looked for at once
    local wide = not read_scope().narrow
    if wide then
        local own = {}
        for i = 37, #ARGV - 1, 2 do
            own[#own + 1] = prefix .. 'config:agent:{' .. ARGV[i] .. '}'
        end
        own_configs = #own > 0 and redis.call('EXISTS', unpack(own)) > 0
    end
    for i = 37, #ARGV - 1, 2 do
        uid = ARGV[i]
        key = prefix .. 'agent:{' .. uid .. '}'
        skey = prefix .. 'status:{' .. uid .. '}'
        status_t = nil
        acfg = nil
        -- one read: the config fields (1 to 6), then the rest
        local cur = redis.call('HMGET', key, unpack(check_fields))
        local caps = cur[7]
        if caps and cur[8] == ARGV[i + 1] and cur[9] == '1' then
            local set = {}
            local h, _, ckey = owed_config(set, caps, '', nil, force, now,
                                           cur)
            local offer, extra, cs = owed_settings(set, caps, cur[11],
                                                   false)
            local packages = owed_packages(set, caps, force, now)
            if #set > 0 then
                redis.call('HSET', key, unpack(set))
            end
            local command = ''
            if h == '' and offer == 0 and packages == '' then
                command = owed_command(caps)
            end
            local message = owed_message(cur[10])
            if h ~= '' or offer == 1 or packages ~= '' or command ~= ''
               or #message > 0
            then
                if ckey ~= '' then
                    owed_keys[ckey] = true
                end
                if offer == 0 and packages == '' and command == ''
                   and #message == 0
                then
                    -- owed a config only: one answer for all who are
                    -- owed the same (a fan-out's every agent)
                    local by_hash = same[ckey]
                    if not by_hash then
                        by_hash = {}
                        same[ckey] = by_hash
                    end
                    local e = by_hash[h]
                    if not e then
                        e = { {}, 0, h, ckey, 0, '', {}, '', '', '' }
                        by_hash[h] = e
                        out[#out + 1] = e
                    end
                    e[1][#e[1] + 1] = (i - 35) / 2
                else
                    out[#out + 1] = { (i - 35) / 2, offer, h, ckey, 0,
                                      command, message, extra, cs, packages }
                end
            end
        end
    end
    local files = {}
    for ckey in pairs(owed_keys) do
        files[#files + 1] = ckey
        files[#files + 1] = files_of[ckey]
    end
    return { out, files }
end

-- an AvailableComponents message (protobuf): its hash, and whether it
-- lists components (field 1) or carries the hash only (field 2, as
-- opamp-go sends it until the server sets ReportAvailableComponents);
-- nil, false for what this short reader does not follow
local function components_of(pb)
    local i, n, hash, list = 1, #pb, nil, false
    while i <= n do
        local tag = string.byte(pb, i)
        if tag >= 128 or (tag % 8 ~= 0 and tag % 8 ~= 2) then
            return nil, false
        end
        local len, mul, b = 0, 1, 128
        i = i + 1
        while b >= 128 do
            b = string.byte(pb, i)
            if not b then
                return nil, false
            end
            len, mul, i = len + (b % 128) * mul, mul * 128, i + 1
        end
        if tag % 8 == 2 then
            if tag == 10 then
                list = true
            elseif tag == 18 then
                hash = string.sub(pb, i, i + len - 1)
            end
            i = i + len
        end
    end
    return hash, list
end

-- Content that many agents report alike is stored once (a build's
-- component list, a config rolled out to a fleet):
-- <prefix>shared:<kind>:<digest>, a hash of the bytes ("data") and the
-- number of agents that refer to them ("refs"); the agent hash holds
-- <field>_ref = <digest> instead of <field>.  Components are named by
-- the hash the agent gives them (the spec's own mechanism: a list is
-- known fleet-wide by its hash), configs by the SHA1 of their bytes.
local function shared_key(kind, digest)
    return prefix .. 'shared:' .. kind .. ':' .. digest
end

-- the agent drops its reference; the last one out deletes the content
local function unref(kind, digest)
    local k = shared_key(kind, digest)
    if redis.call('HINCRBY', k, 'refs', -1) <= 0 then
        redis.call('DEL', k)
    end
end

-- the agent's field now refers to digest (data nil: known to exist)
local function refer(name, kind, digest, data)
    local old = redis.call('HGET', key, name .. '_ref')
    if old == digest then
        return
    end
    local k = shared_key(kind, digest)
    if redis.call('HINCRBY', k, 'refs', 1) == 1 and data then
        redis.call('HSET', k, 'data', data)
    end
    if old then
        unref(kind, old)
    end
    redis.call('HSET', key, name .. '_ref', digest)
    stored_status()[name] = nil
    status_changed = true
end

-- the agent's field is stored in its own hash again
local function unshare(name, kind)
    local old = redis.call('HGET', key, name .. '_ref')
    if old then
        unref(kind, old)
        redis.call('HDEL', key, name .. '_ref')
    end
end

local function tohex(b)
    return (string.gsub(b, '.', function(c)
        return string.format('%02x', string.byte(c))
    end))
end

local function has_field(name)
    return stored_status()[name] ~= nil
           or redis.call('HEXISTS', key, name .. '_ref') == 1
end

-- whether the message carries the agent's full status: its description,
-- and every status field that its capabilities say it reports
-- (capability bit, presence mask bit, field) unless the agent never
-- reported that field (an agent with no remote config yet has no status
-- for it), and its custom capabilities when it ever sent some; nothing
-- reported before is then left to status compression; for an agent
-- with nothing stored (new), every field its capabilities name
local function complete_status(new)
    if mask_all % 2 == 0 then
        return false
    end
    for _, p in ipairs({ { 4, 4, 'effective_config' },
                         { 16, 16, 'package_statuses' },
                         { 2048, 2, 'health' },
                         { 4096, 8, 'remote_config_status' },
                         { 16384, 64, 'available_components' },
                         { 32768, 128, 'connection_settings_status' },
                         { 0, 32, 'custom_capabilities' } }) do
        if (p[1] == 0 and not new or p[1] ~= 0 and bit(ARGV[5], p[1]))
           and math.floor(mask_all / p[2]) % 2 == 0
           and (new or has_field(p[3]))
        then
            return false
        end
    end
    return true
end

-- an agent hash of an older layout (schema 2 or less, docs/redis-schema.md
-- "Upgrade"): its status fields move to the status hash as they are, the
-- fields this layout does without go, and the hash is written anew, so
-- that Redis stores it compactly again (it never does for a hash that
-- once held a long value)
if cur[1] and cur[10] ~= SCHEMA then
    local old = redis.call('HGETALL', key)
    local small, moved = {}, {}
    for i = 1, #old, 2 do
        local f = old[i]
        if f == 'description' or f == 'health' or f == 'effective_config'
           or f == 'remote_config_status' or f == 'package_statuses'
           or f == 'custom_capabilities' or f == 'available_components'
           or f == 'connection_settings_status'
        then
            moved[f] = old[i + 1]
        elseif f ~= 'attributes' and f ~= 'instance_uid' then
            small[#small + 1] = f
            small[#small + 1] = old[i + 1]
        end
    end
    redis.call('DEL', key)
    redis.call('HSET', key, unpack(small))
    if next(moved) then
        redis.call('SET', skey, status_string(moved))
    end
end

local stored_seq, settled, connected, expires, holder, holder_tr,
      holder_ch, cs_hash, first_seen =
      cur[1], cur[2], cur[3], cur[4], cur[5], cur[6], cur[7], cur[8], cur[9]

local has_desc = mask % 2 == 1
local verdict = 0

-- what the agent would keep: over opamp_max_agent_state, nothing of the
-- message is stored and the agent is told (verdict 3)
if mask ~= 0 and ARGV[36] ~= '' then
    local total, m = 0, mask
    for i, name in ipairs(fields) do
        if m % 2 == 1 then
            total = total + #ARGV[16 + i]
        else
            total = total + #(stored_status()[name] or '')
            local kind = shared_kinds[i]
            local ref = kind and redis.call('HGET', key, name .. '_ref')
            if ref then
                total = total + redis.call('HSTRLEN', prefix .. 'shared:'
                                           .. kind .. ':' .. ref, 'data')
            end
        end
        m = (m - m % 2) / 2
    end
    if total > tonumber(ARGV[36]) then
        return { 0, 3, '', '', 0, '', {}, 0, '', {}, '', '', '' }
    end
end

-- another live WebSocket connection holds this uid
if first and holder and holder ~= conn and connected == '1'
   and holder_tr == 'websocket' and tonumber(expires or '0') > now
then
    if stored_seq and stored_seq == prev_seq then
        verdict = 1
    else
        return { 0, 2, holder_ch or '', holder, 0, '', {}, 0, '', {}, '',
                 '', '' }
    end
end

local full = false

-- the agent process started again: it counts from 0 (or anew, lower)
-- and reports its description; what it was offered before is lost
local restarted = has_desc and stored_seq
                  and (seq == '0' or less(seq, stored_seq)) or false

if not stored_seq then
    -- past its first message (sequence 0), an agent unknown here was
    -- removed (DELETE agents/<uid>, opamp_agent_retention) or Redis lost
    -- it: status compression leaves out what it reported before
    full = not has_desc or (seq ~= '0' and not complete_status(true))
else
    -- out of sequence: ask for the full state, unless the agent restarted
    -- or the message carries it already
    if stored_seq ~= prev_seq and not restarted
       and not complete_status()
    then
        full = true
    end

    if not has_desc and not stored_status().description then
        full = true
    end
end

local set = { 'schema', SCHEMA, 'sequence_num', seq, 'capabilities', ARGV[5],
              'last_seen_ms', ARGV[1],
              'expires_ms', tostring(now + tonumber(ARGV[11])),
              'transport', transport, 'conn', conn, 'server_id', ARGV[8],
              'worker_pid', ARGV[9], 'channel', ARGV[10] }

-- the fleet index, scored by last_seen_ms
redis.call('ZADD', prefix .. 'agents', ARGV[1], uid)

if not first_seen then
    set[#set + 1] = 'first_seen_ms'
    set[#set + 1] = ARGV[1]
end

if connected ~= '1' or holder ~= conn then
    set[#set + 1] = 'connected_at_ms'
    set[#set + 1] = ARGV[1]
end

set[#set + 1] = 'connected'

if disconnect then
    set[#set + 1] = '0'
    set[#set + 1] = 'disconnected_at_ms'
    set[#set + 1] = ARGV[1]
else
    set[#set + 1] = '1'
end

-- AvailableComponents with the hash only: a stored list of the same hash
-- is kept, else the agent is asked for the list (ReportsAvailableComponents)
local components = 0
local keep_components = false

if math.floor(mask_all / 64) % 2 == 1 then
    local h, list = components_of(ARGV[23])
    if h and h ~= '' then
        local digest = tohex(h)
        if list then
            refer('available_components', 'components', digest, ARGV[23])
            keep_components = true
        elseif redis.call('EXISTS', shared_key('components', digest)) == 1
        then
            refer('available_components', 'components', digest, nil)
            keep_components = true
        else
            local sh, slist = components_of(
                                  stored_status().available_components or '')
            if slist and sh == h then
                keep_components = true
            elseif bit(ARGV[5], 16384) and not disconnect then
                components = 1
            end
        end
    end
end

-- the status fields go to their own key, so that the agent hash holds
-- small values only (Redis keeps such a hash in one compact block)
for i, name in ipairs(fields) do
    if mask % 2 == 1 then
        if i == 3 and #ARGV[19] > 64 then
            refer(name, 'config', redis.sha1hex(ARGV[19]), ARGV[19])
        elseif not (i == 7 and keep_components) then
            if shared_kinds[i] then
                unshare(name, shared_kinds[i])
            end
            stored_status()[name] = ARGV[16 + i]
            status_changed = true
        end
    end
    mask = (mask - mask % 2) / 2
end

if ARGV[14] ~= '' then
    set[#set + 1] = 'healthy'
    set[#set + 1] = ARGV[14]
end

if ARGV[27] ~= '' then
    set[#set + 1] = 'config_status'
    set[#set + 1] = ARGV[27]
    set[#set + 1] = 'config_error'
    set[#set + 1] = ARGV[28]
    set[#set + 1] = 'config_hash'
    set[#set + 1] = ARGV[29]
end

local names = nil
if ARGV[31] ~= '' then
    names = string.sub(ARGV[31], 2)
    set[#set + 1] = 'custom_capability_names'
    set[#set + 1] = names
end

-- messages of agents for a control plane to read, fleet-wide, bounded
if ARGV[32] ~= '' then
    redis.call('XADD', prefix .. 'custom_messages', 'MAXLEN', '~', '10000',
               '*', 'instance_uid', uid, 'capability', ARGV[32],
               'type', ARGV[33], 'data', ARGV[34])
end

local owed_hash, owed_files = '', {}
local command, message = '', {}

if not disconnect then
    -- a restarted agent that reports no remote config status runs none
    local reported = nil
    if ARGV[27] ~= '' then
        reported = ARGV[29]
    elseif restarted then
        reported = ''
    end
    owed_hash, owed_files = owed_config(set, ARGV[5], has_desc and ARGV[17] or '', reported,
                                        ARGV[30] == '1' or restarted, now)

    if names == nil then
        names = redis.call('HGET', key, 'custom_capability_names')
    end
    message = owed_message(names)

    -- AgentCapabilities.ReportsAvailableComponents, and none stored
    if math.floor(tonumber(ARGV[5]) / 16384) % 2 == 1
       and math.floor(mask_all / 64) % 2 == 0
       and not has_field('available_components')
    then
        components = 1
    end
end

if ARGV[35] ~= '' then
    set[#set + 1] = 'packages_hash'
    set[#set + 1] = string.sub(ARGV[35], 2)
end

local offer, extra, cs, packages = 0, '', '', ''

if not disconnect then
    offer, extra, cs = owed_settings(set, ARGV[5], cs_hash,
                                     full or restarted)
    packages = owed_packages(set, ARGV[5], ARGV[30] == '1' or restarted,
                             now)
end

-- a command travels alone: the spec lets the agent ignore everything else
-- in a ServerToAgent that carries one, so it waits for a quiet reply
if not disconnect and owed_hash == '' and not full and offer == 0
   and components == 0 and packages == ''
then
    command = owed_command(ARGV[5])
end

-- owed nothing and no offer out: its next heartbeats take the short way
set[#set + 1] = 'settled'
if can_settle(ARGV[5]) and not disconnect and not full and verdict == 0
   and not pending
   and owed_hash == '' and offer == 0 and components == 0
   and packages == '' and command == '' and #message == 0
then
    set[#set + 1] = settle_mark()
else
    set[#set + 1] = ''
end

-- an empty value is no field: Redis keeps each field, name and all
local put, gone = {}, {}
for i = 1, #set, 2 do
    if set[i + 1] == '' then
        gone[#gone + 1] = set[i]
    else
        put[#put + 1] = set[i]
        put[#put + 1] = set[i + 1]
    end
end
redis.call('HSET', key, unpack(put))
if #gone > 0 then
    redis.call('HDEL', key, unpack(gone))
end

if status_changed then
    local text = status_string(stored_status())
    if text == '' then
        redis.call('DEL', skey)
    else
        redis.call('SET', skey, text)
    end
end

return { full and 1 or 0, verdict, holder_ch or '', holder or '', offer,
         owed_hash, owed_files, components, command, message, extra, cs,
         packages }
