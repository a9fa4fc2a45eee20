-- lib/owed_config.lua, included after lib/protobuf.lua,
-- lib/attributes.lua, lib/status.lua, lib/state.lua, lib/caps.lua and
-- lib/groups.lua by
-- report.lua and check.lua, after lib/rollout.lua: which config an agent
-- is owed (owed_config()), by its own config or the group whose selector
-- matches its attributes, and, while the group rolls a new version out,
-- by the agent's place in the rollout.
-- Reads prefix, now_text, version_key, groups_key, timeout and the agent
-- (key, acfg, skey, uid) of lib/state.lua, and sets its pending.  Groups,
-- configs, the config_version and its scope are read once per call,
-- however many agents a check batch resolves.

-- the agent's stored status fields (lib/status.lua), read when first
-- needed; status_changed: report.lua writes them back at the end
local status_t, status_changed = nil, false

local function stored_status()
    if not status_t then
        status_t = status_read(redis.call('GET', skey))
    end
    return status_t
end

-- whether a description is stored, without reading the string: fields
-- are in ascending order and the description (3) is the lowest, so its
-- tag (26) is the string's first byte when it is there
local function has_stored_description()
    if status_t then
        return status_t.description ~= nil
    end
    return redis.call('GETRANGE', skey, 0, 0) == '\26'
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

-- the attribute keys the groups' selectors name, and their lengths (as
-- numbers): only those are read of an agent's description (a check batch
-- reads up to 64 descriptions)
local selector_keys = {}

local function load_groups()
    local list = groups_by_precedence(groups_key)
    for _, e in ipairs(list) do
        local r = redis.call('HMGET', prefix .. 'config:group:' .. e[1],
                             'selector', 'hash')
        e[3], e[4] = parse_selector(r[1]), r[2]
        for i = 1, #(e[3] or {}), 2 do
            selector_keys[e[3][i]] = true
            selector_keys[#e[3][i]] = true
        end
    end
    return list
end

-- false when a check batch found that none of its agents has its own
-- config (one EXISTS for all instead of one HGET each)
local own_configs = true

-- The agent's server-set attributes (opamp_agent_attribute, the agent
-- hash's server_attributes, an AgentDescription of identifying ones):
-- report.lua sets them from its message, check.lua empties them (nil)
-- for each agent and they are read when needed; attrs_moved: they
-- changed, and the agent's config is resolved again
local server_attrs, attrs_moved = nil, false

local function server_attributes()
    if server_attrs == nil then
        server_attrs = redis.call('HGET', key, 'server_attributes') or ''
    end
    return server_attrs
end

-- (desc: the agent's description, protobuf)
local function resolve(desc)
    local h = own_configs and redis.call('HGET', agent_config_key(), 'hash')
    if h then
        return 'agent', h
    end
    groups = groups or load_groups()
    if #groups == 0 then
        return '', ''
    end
    local attrs = attributes_of(desc, selector_keys)
    -- what nginx set wins over what the agent says of itself
    local sa = server_attributes()
    if sa ~= '' then
        for k, v in pairs((attributes_of(sa, selector_keys))) do
            attrs[k] = v
        end
    end
    for _, e in ipairs(groups) do
        if e[4] and matches(e[3], attrs) then
            return 'group:' .. e[1], rollout_hash(prefix, e[1], uid, e[4])
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
        version = version or redis.call('GET', version_key) or '0'
        local v, sc = string.match(redis.call('GET', version_key .. '_scope')
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
-- (pre: those fields, when the caller read them already; report.lua
-- reads them among its long_fields, which must name each of them)
local config_fields = { 'config_version', 'desired_config', 'desired_hash',
                        'offered_hash', 'offered_ms', 'config_hash',
                        'failed_hash' }

-- the hash of the config the agent reported FAILED for, when this call
-- learnt it or cleared it ("": none), else nil: the stored failed_hash
-- counts.  A config the agent failed is not offered to it again, after
-- opamp_agent_timeout or at a reconnect alike, until its hash changes
-- (a new version) or an operator retries (admin_push.lua "retry").
local failed_now = nil

-- (desc: the description the message carries, else "")
local function owed_config(set, caps, desc, reported, force, now, pre)
    if not accepts_config(caps) then
        return '', {}, ''
    end

    version = version or redis.call('GET', version_key) or '0'
    local c = pre or redis.call('HMGET', key, unpack(config_fields))
    local desired, dhash = c[2] or '', c[3] or ''

    local moved = c[1] ~= version or desc ~= '' or attrs_moved

    if moved and desc == '' and not attrs_moved and keeps_desired(c[1])
    then
        moved = false
        if desired == scope[2] then
            -- the agent's group changed its files: only the hash moves
            local name = string.sub(desired, 7)
            local h = hash_of_group(name)
            if h then
                h = rollout_hash(prefix, name, uid, h)
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
            if status_t then
                desc = status_t.description
            else
                desc = status_description(redis.call('GET', skey))
            end
            desc = desc or redis.call('HGET', key, 'description') or ''
        end
        desired, dhash = resolve(desc)
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

    -- failed by the agent already: nothing to wait for either
    local failed = failed_now
    if failed == nil then
        failed = c[7] or ''
    end
    if dhash == failed then
        return '', {}, ''
    end

    -- offered already and not lost on the way: the agent is applying it
    if not force and dhash == c[4]
       and now - tonumber(c[5] or '0') < timeout
    then
        pending = math.min(pending or math.huge,
                           tonumber(c[5] or '0') + timeout)
        return '', {}, ''
    end

    local ckey
    if desired == 'agent' then
        ckey = agent_config_key()
    else
        ckey = rollout_files_key(prefix, string.sub(desired, 7), dhash)
    end

    local files = config_files(ckey)
    if #files == 0 then
        return '', {}, ''
    end

    set[#set + 1] = 'offered_hash'
    set[#set + 1] = dhash
    set[#set + 1] = 'offered_ms'
    set[#set + 1] = now_text

    return dhash, files, ckey
end
