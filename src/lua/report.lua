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
-- ARGV[26] remote_config_status.status name; "" when not reported
-- ARGV[27] remote_config_status.error_message
-- ARGV[28] remote_config_status.last_remote_config_hash, hex
-- ARGV[29] "1": send the owed config even if it was offered before
-- ARGV[30] custom capabilities reported: "" when not reported, else "+"
--          and the capability names, one per line
-- ARGV[31] custom_message of the agent: capability ("" when none)
-- ARGV[32] its type
-- ARGV[33] its data
-- ARGV[34] package_statuses.server_provided_all_packages_hash reported:
--          "" when no package_statuses, else "+" and the hash in hex
-- ARGV[35] opamp_max_agent_state, bytes: the status fields the agent
--          keeps (those it sends now, and those it does not as stored)
--          may not exceed it ("": no limit)
-- ARGV[36] connection_settings_status reported: "" when not reported,
--          else its status name, a space and last_connection_settings_hash
--          in hex
-- ARGV[37] opamp_custom_messages_size, bytes: what the custom_messages
--          stream may hold
-- ARGV[38] the agent's identity (opamp_agent_identity), "" when the
--          location names none: the first identity that reports a uid
--          owns it (docs/security.md)
-- ARGV[39] the server-set attributes (opamp_agent_attribute): an
--          AgentDescription of identifying_attributes (protobuf), ""
--          when none; they win over the agent's own for selectors
-- ARGV[40] the worker's digest of ARGV[38] and ARGV[39] (hex), part of
--          the beat mark; "" when both are empty; with
--          opamp_enrollment_token it digests ARGV[42] too
-- ARGV[41] with opamp_enrollment_token, the SHA-256 (hex) of a token the
--          worker made for this message: it becomes the agent's next
--          token (token_next_sha256) when an offer of OpAMP connection
--          settings goes out, which then carries it; "" without
-- ARGV[42] with opamp_enrollment_token, the credential presented: "E"
--          the enrollment credential, "R" the same where
--          opamp_token_reenroll is on, else the presented token's SHA-256
--          (hex); "" without (docs/security.md, Tokens)
--
-- Heartbeats that a worker batches go to beats.lua, which takes the same
-- short way (lib/short_way.lua); after a config change, check.lua looks
-- at connected agents with the same owed_*() functions (lib/owed*.lua).
--
-- Returns { full_state (0/1), verdict (0 ok, 1 takeover, 2 duplicate,
--           3 over opamp_max_agent_state, 4 the uid is bound to another
--           identity, 5 the credential is refused: nothing stored),
--           holder channel (with 5 why: "revoked", "enrollment",
--           "mismatch"), holder conn, offer connection settings (0/1),
--           owed config hash (hex, "" for none),
--           the owed config's hash fields (HGETALL) or an empty array,
--           ask for available components (0/1),
--           command owed ("restart" or ""),
--           custom message owed { capability, type, data } or {},
--           stored ConnectionSettingsOffers to merge into the offer
--           (protobuf, "" for none), the offer's hash (hex),
--           PackagesAvailable owed (protobuf, "" for none),
--           for a WebSocket agent that accepts remote config, its
--           config_version, desired_config, desired_hash, offered_hash,
--           offered_ms, config_hash and failed_hash as stored now
--           (false: none), else {} }

--@include lib/protobuf.lua
--@include lib/attributes.lua
--@include lib/status.lua
--@include lib/components.lua
--@include lib/state.lua
--@include lib/rollout.lua
--@include lib/gauges.lua
--@include lib/inventory.lua

-- the layout version of the agent hash (docs/redis-schema.md); the
-- worker's digest of a beat_mark() says the same
local SCHEMA = '3'

-- the call and its agent, for the functions of lib/ (lib/state.lua)
key, acfg, skey, uid = KEYS[1], KEYS[2], KEYS[5], ARGV[2]
version_key, groups_key = KEYS[3], KEYS[4]
now_text, now = ARGV[1], tonumber(ARGV[1])
prefix, timeout, cs_offer = ARGV[25], tonumber(ARGV[11]), ARGV[15]

local seq, prev_seq = ARGV[3], ARGV[4]
local conn, transport = ARGV[6], ARGV[7]
local first, disconnect = ARGV[12] == '1', ARGV[13] == '1'
local mask = tonumber(ARGV[16])
local mask_all = mask

-- The short way of a heartbeat (lib/short_way.lua) comes first in the
-- script, before the functions of the long way are even made: the fields
-- it reads, then whether it can take it.
local short_fields = { 'sequence_num', 'settled', 'connected',
                       'expires_ms', 'conn', 'transport', 'channel',
                       'cs_hash', 'first_seen_ms', 'schema', 'cs_again',
                       'cs_offered_ms', 'settled_until', 'identity',
                       'server_attributes', 'token_sha256',
                       'token_next_sha256', 'token_revoked_ms', 'cs_sent',
                       'token_ms' }

-- what a heartbeat must match in the agent's "settled" to take the short
-- way, but for the config_version in front: its capabilities, the
-- module's settings hash, and the connection, transport and worker
-- channel it came on (another connection, or a disconnect, which clears
-- "settled", take the long way), and the layout version (an agent settled
-- under an older one takes the long way once, which moves it).  Digested
-- to 16 hex digits of their SHA1 so that the field stays short: an agent
-- hash whose values all fit in 64 bytes is stored compactly by Redis
-- (hash-max-listpack-value).  The worker digests the same text for a
-- batch of beats.lua.
local function beat_mark(caps, cs, cn, tr)
    local text = caps .. ' ' .. cs .. ' ' .. cn .. ' ' .. tr .. ' '
                 .. ARGV[10] .. ' ' .. SCHEMA
    -- the identity and server-set attributes, when the location has them:
    -- a heartbeat under others takes the long way, which checks them
    if ARGV[40] ~= '' then
        text = text .. ' ' .. ARGV[40]
    end
    return string.sub(redis.sha1hex(text), 1, 16)
end

--@include lib/short_way.lua

-- What the long way reads of the agent hash besides those, by name in hv
-- below: the shared content it refers to, what owed_config() reads (all
-- of lib/owed_config.lua's config_fields), what the agent counts for in
-- the gauges and the inventory.  Each read alone is a command, and most
-- of a report's cost is per command and per Lua string.
local long_fields = { 'effective_config_ref', 'available_components_ref',
                      'custom_capability_names', 'gauge', 'healthy',
                      'config_status', 'inv_version', 'inv_os', 'inv_config',
                      'inv_components', 'config_version', 'desired_config',
                      'desired_hash', 'offered_hash', 'offered_ms',
                      'config_hash', 'failed_hash' }

-- a heartbeat with nothing in it may take the short way; any other
-- message takes the long way, which reads both in one HMGET
local beat = mask == 0 and not disconnect
             and ARGV[14] == '' and ARGV[26] == ''
             and ARGV[29] ~= '1' and ARGV[30] == '' and ARGV[31] == ''
             and ARGV[34] == ''
local nshort = #short_fields
if not beat then
    for i, f in ipairs(long_fields) do
        short_fields[nshort + i] = f
    end
end
local cur = redis.call('HMGET', key, unpack(short_fields))

if beat
   and short_way(key, uid, seq, prev_seq, { cur[1], cur[2], cur[13] },
                 beat_mark(ARGV[5], ARGV[15], conn, transport),
                 math.floor((tonumber(ARGV[5]) or 0) / 1024) % 2 == 1
                     and '1' or '',
                 tostring(now + tonumber(ARGV[11])), nil)
then
    return { 0, 0, cur[7], cur[5], 0, '', {}, 0, '', {}, '', '', '', {} }
end

-- The first identity that reports a uid owns it: another one is refused
-- before anything of its message is stored or any connection is taken
-- over (docs/security.md).  The binding goes with the agent (DELETE
-- agents/<uid>, the retention sweep) or by DELETE agents/<uid>/identity.
local identity = ARGV[38]
if identity ~= '' and cur[14] and cur[14] ~= identity then
    return { 0, 4, '', '', 0, '', {}, 0, '', {}, '', '', '', {} }
end

-- Per-agent tokens (docs/security.md, Tokens): the credential presented
-- must be the uid's token, or its next one (which then becomes its
-- token: the old one is good no more), or the enrollment credential for
-- a uid that holds no token and was never revoked (or, with
-- opamp_token_reenroll on, one that lost its token).  Refused before
-- anything of the message is stored.
local presented, enrolling = ARGV[42], false
if presented ~= '' then
    local held, nxt, revoked = cur[16], cur[17], cur[18]
    local why = nil
    if presented == 'E' or presented == 'R' then
        if revoked then
            why = 'revoked'
        elseif held and presented == 'E' then
            why = 'enrollment'
        end
        enrolling = true
    elseif nxt and presented == nxt then
        -- the agent took its new token: the old one goes
        cur[16], cur[17] = nxt, nil
        token_moved = true
    elseif not held or presented ~= held then
        why = revoked and 'revoked' or 'mismatch'
    end
    if why then
        return { 0, 5, why, '', 0, '', {}, 0, '', {}, '', '', '', {} }
    end
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

--@include lib/caps.lua
--@include lib/groups.lua
--@include lib/owed_config.lua
--@include lib/owed.lua

-- what a settled agent's state depends on besides its own hash: any
-- change of configs or offers (the admin API increments config_version,
-- or clears the agent's "settled"), its capabilities, and the module's
-- part of the connection settings
local function settle_mark()
    version = version or redis.call('GET', KEYS[3]) or '0'
    return version .. ' ' .. beat_mark(ARGV[5], ARGV[15], conn, transport)
end

-- The custom_messages stream: at most CUSTOM_ENTRIES entries and at most
-- size bytes of field values (docs/redis-schema.md).  Each entry's place
-- in the bytes ever appended is kept in <prefix>custom_messages_offsets
-- (a sorted set of "<id> <bytes>" scored by where the entry starts), so
-- that what has to go is found by Redis in log time and trimmed in one
-- XTRIM, never read entry by entry in Lua.  A stream of an older version
-- (no offsets yet) is started anew: its entries' sizes were never known.
local CUSTOM_ENTRIES = 10000

local function custom_message(who, cap, typ, data, size)
    local sk = prefix .. 'custom_messages'
    local zk = sk .. '_offsets'
    local bytes = #who + #cap + #typ + #data
    if bytes > size then
        return
    end
    local newest = redis.call('ZRANGE', zk, -1, -1, 'WITHSCORES')
    local start = 0
    if newest[1] then
        start = tonumber(newest[2])
                + tonumber(string.match(newest[1], ' (%d+)$') or '0')
    end
    local id = redis.call('XADD', sk, '*', 'instance_uid', who,
                          'capability', cap, 'type', typ, 'data', data)
    redis.call('ZADD', zk, string.format('%.0f', start), id .. ' ' .. bytes)
    -- how many of the oldest go: by count, and by bytes (those that start
    -- before the last size bytes)
    local k = math.max(redis.call('ZCARD', zk) - CUSTOM_ENTRIES,
                       redis.call('ZCOUNT', zk, '-inf', '('
                                  .. string.format('%.0f',
                                                   start + bytes - size)))
    local cut
    if k > 0 then
        cut = string.match(redis.call('ZRANGE', zk, k - 1, k - 1)[1],
                           '^(%S+)')
        redis.call('ZREMRANGEBYRANK', zk, 0, k - 1)
    elseif not newest[1] then
        cut = id
    end
    if cut then
        -- everything up to cut goes: MINID keeps the ids from its next one
        local ms, sq = string.match(cut, '^(%d+)%-(%d+)$')
        if cut == id then
            redis.call('XTRIM', sk, 'MINID', id)
        else
            redis.call('XTRIM', sk, 'MINID', ms .. '-'
                       .. string.format('%.0f', tonumber(sq) + 1))
        end
    end
end

-- Content that many agents report alike is stored once (a build's
-- component list, a config rolled out to a fleet):
-- <prefix>shared:<kind>:<digest>, a hash of the bytes ("data") and the
-- number of agents that refer to them ("refs"); the agent hash holds
-- <field>_ref = <digest> instead of <field>.  Components are named by
-- the hash the agent gives them (the spec's own mechanism: a list is
-- known fleet-wide by its hash), configs by the SHA1 of their bytes.
-- the long way's fields of the agent hash (long_fields below), by name
local hv

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
    local old = hv[name .. '_ref']
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
    hv[name .. '_ref'] = digest
    stored_status()[name] = nil
    status_changed = true
end

-- the agent's field is stored in its own hash again
local function unshare(name, kind)
    local old = hv[name .. '_ref']
    if old then
        unref(kind, old)
        redis.call('HDEL', key, name .. '_ref')
        hv[name .. '_ref'] = nil
    end
end

local function tohex(b)
    return (string.gsub(b, '.', function(c)
        return string.format('%02x', string.byte(c))
    end))
end

local function has_field(name)
    return stored_status()[name] ~= nil or hv[name .. '_ref'] ~= nil
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

-- the long way's fields (long_fields) by name, nil for none, read with
-- cur (or now, after a heartbeat that missed the short way), and kept as
-- this call writes them, so that the gauges, the inventory and the
-- worker's view are worked out from what the hash holds after the call
-- without reading it again
hv = {}
do
    local r, at = cur, nshort
    if beat then
        r, at = redis.call('HMGET', key, unpack(long_fields)), 0
    end
    for i, f in ipairs(long_fields) do
        hv[f] = r[at + i] or nil
    end
end

local stored_seq, settled, connected, expires, holder, holder_tr,
      holder_ch, cs_hash, first_seen =
      cur[1], cur[2], cur[3], cur[4], cur[5], cur[6], cur[7], cur[8], cur[9]

local has_desc = mask % 2 == 1
local verdict = 0

-- what the agent would keep: over opamp_max_agent_state, nothing of the
-- message is stored and the agent is told (verdict 3)
if mask ~= 0 and ARGV[35] ~= '' then
    local total, m = 0, mask
    for i, name in ipairs(fields) do
        if m % 2 == 1 then
            total = total + #ARGV[16 + i]
        else
            total = total + #(stored_status()[name] or '')
            local kind = shared_kinds[i]
            local ref = kind and hv[name .. '_ref']
            if ref then
                total = total + redis.call('HSTRLEN', prefix .. 'shared:'
                                           .. kind .. ':' .. ref, 'data')
            end
        end
        m = (m - m % 2) / 2
    end
    if total > tonumber(ARGV[35]) then
        return { 0, 3, '', '', 0, '', {}, 0, '', {}, '', '', '', {} }
    end
end

-- another live WebSocket connection holds this uid
if first and holder and holder ~= conn and connected == '1'
   and holder_tr == 'websocket' and tonumber(expires or '0') > now
then
    -- the same agent reconnecting: in sequence, or ahead of a settled
    -- agent's stored sequence_num, which lags by the heartbeats its
    -- worker answered itself (opamp_heartbeat_recheck); the gap asks
    -- for its full state below, unless the message carries it
    if stored_seq and (stored_seq == prev_seq
                       or ((settled or '') ~= '' and prev_seq ~= ''
                           and less(stored_seq, prev_seq)))
    then
        verdict = 1
    else
        return { 0, 2, holder_ch or '', holder, 0, '', {}, 0, '', {}, '',
                 '', '', {} }
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

    if not has_desc and not has_stored_description() then
        full = true
    end
end

-- the server-set attributes as this location sets them now ("" none):
-- when they change, the agent's config is resolved again
server_attrs = ARGV[39]
attrs_moved = server_attrs ~= (cur[15] or '')

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

if identity ~= '' and not cur[14] then
    set[#set + 1] = 'identity'
    set[#set + 1] = identity
    set[#set + 1] = 'identity_bound_ms'
    set[#set + 1] = ARGV[1]
end

if attrs_moved then
    set[#set + 1] = 'server_attributes'
    set[#set + 1] = server_attrs
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

if ARGV[26] ~= '' then
    set[#set + 1] = 'config_status'
    set[#set + 1] = ARGV[26]
    set[#set + 1] = 'config_error'
    set[#set + 1] = ARGV[27]
    set[#set + 1] = 'config_hash'
    set[#set + 1] = ARGV[28]
    -- the config the agent failed, not to be offered again
    -- (lib/owed_config.lua); applied after all, it is failed no more
    if ARGV[26] == 'FAILED' and ARGV[28] ~= '' then
        failed_now = ARGV[28]
    elseif ARGV[26] == 'APPLIED'
           and hv.failed_hash == ARGV[28]
    then
        failed_now = ''
    end
    if failed_now then
        set[#set + 1] = 'failed_hash'
        set[#set + 1] = failed_now
    end
end

local names = nil
if ARGV[30] ~= '' then
    names = string.sub(ARGV[30], 2)
    set[#set + 1] = 'custom_capability_names'
    set[#set + 1] = names
end

-- messages of agents for a control plane to read, fleet-wide, bounded
if ARGV[31] ~= '' then
    custom_message(uid, ARGV[31], ARGV[32], ARGV[33], tonumber(ARGV[37]))
end

local owed_hash, owed_files = '', {}
-- the agent's config fields as owed_config() reads them
local config_pre = {}
for i, f in ipairs(config_fields) do
    config_pre[i] = hv[f] or false
end
local command, message = '', {}

if not disconnect then
    -- a restarted agent that reports no remote config status runs none
    local reported = nil
    if ARGV[26] ~= '' then
        reported = ARGV[28]
    elseif restarted then
        reported = ''
    end
    local desc = has_desc and ARGV[17] or ''
    owed_hash, owed_files = owed_config(set, ARGV[5], desc, reported,
                                        ARGV[29] == '1' or restarted, now,
                                        config_pre)

    if names == nil then
        names = hv.custom_capability_names
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

if ARGV[34] ~= '' then
    set[#set + 1] = 'packages_hash'
    set[#set + 1] = string.sub(ARGV[34], 2)
end

-- the agent says whether it applied the connection settings offered
-- last: FAILED, or the hash of others, and they are owed again
local cs_again = cur[11]
if ARGV[36] ~= '' then
    local st, reported = string.match(ARGV[36], '^(%u*) (%x*)$')
    cs_again = (st == 'FAILED' or reported ~= (cur[19] or cs_hash))
               and '1' or ''
end

local offer, extra, cs, packages = 0, '', '', ''

-- an agent that holds a token, or is being given one, gets OpAMP
-- settings only with a new token in them (lib/owed.lua).  One that comes
-- with the enrollment credential having had a token (it lost it:
-- opamp_token_reenroll) or been offered one it never used is offered
-- them again, with a new token, unless the one made for it is still on
-- its way (opamp_agent_timeout); one never offered a token is offered
-- them as anyone is, once per content
mint = ARGV[41] ~= '' and ARGV[41] or nil
token_agent = cur[20] or mint
local stored_cs = cs_hash
if enrolling and mint and bit(ARGV[5], 256) and (cur[16] or cur[17])
   and (not cur[17] or now - tonumber(cur[12] or '0') >= timeout)
then
    stored_cs = ''
    cs_again = '1'
    cur[12] = nil
end

if not disconnect then
    offer, extra, cs = owed_settings(set, ARGV[5], stored_cs, cs_again,
                                     cur[12])
    packages = owed_packages(set, ARGV[5], ARGV[29] == '1' or restarted,
                             now, ARGV[34] ~= '' and string.sub(ARGV[34], 2)
                                  or nil)
end

-- the offer's hash covers the new token, so that an agent that skips an
-- offer it had (the supervisor) takes this one; cs_sent is what it
-- reports back having applied
if offer == 1 and offer_opamp and mint then
    cs = redis.sha1hex(cs .. mint)
    set[#set + 1] = 'token_next_sha256'
    set[#set + 1] = mint
    set[#set + 1] = 'cs_sent'
    set[#set + 1] = cs
elseif offer == 1 then
    set[#set + 1] = 'cs_sent'
    set[#set + 1] = ''
end

if token_moved then
    set[#set + 1] = 'token_sha256'
    set[#set + 1] = cur[16]
    if not (offer == 1 and offer_opamp and mint) then
        set[#set + 1] = 'token_next_sha256'
        set[#set + 1] = ''
    end
end

if mint and not cur[20] then
    set[#set + 1] = 'token_ms'
    set[#set + 1] = ARGV[1]
end

if offer == 0 and cs_again ~= cur[11] then
    set[#set + 1] = 'cs_again'
    set[#set + 1] = cs_again
end

-- a command travels alone: the spec lets the agent ignore everything else
-- in a ServerToAgent that carries one, so it waits for a quiet reply
if not disconnect and owed_hash == '' and not full and offer == 0
   and components == 0 and packages == ''
then
    command = owed_command(ARGV[5])
end

-- owed nothing: its next heartbeats take the short way.  An offer out
-- unacknowledged is made again once opamp_agent_timeout has passed since
-- it was made: until the first such time (pending, kept as
-- settled_until) it is owed nothing more either.
local settle, settle_until = '', ''
if not disconnect and not full and verdict == 0
   and owed_hash == '' and offer == 0 and components == 0
   and packages == '' and command == '' and #message == 0
then
    settle = settle_mark()
    if pending then
        settle_until = string.format('%.0f', pending)
    end
end
set[#set + 1] = 'settled'
set[#set + 1] = settle
set[#set + 1] = 'settled_until'
set[#set + 1] = settle_until

-- the hash as it is once written (the later of a field set twice wins,
-- as in HSET), and what the agent counts for in the gauges now
-- (lib/gauges.lua): written with the rest when it moved
for i = 1, #set, 2 do
    hv[set[i]] = set[i + 1] ~= '' and set[i + 1] or nil
end
local gauge = gauge_moved(key, hv.gauge,
                          { hv.gauge, transport, hv.healthy,
                            hv.config_status, hv.config_hash,
                            hv.desired_config, hv.desired_hash,
                            hv.connected, hv.failed_hash })
if gauge then
    set[#set + 1] = 'gauge'
    set[#set + 1] = gauge
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
gauge_flush(prefix .. 'fleet:gauges')
-- what runs where (lib/inventory.lua): what this report changed
inventory_update(prefix, key, has_desc and ARGV[17] or nil,
                 math.floor(mask_all / 64) % 2 == 1, stored_status(),
                 ARGV[26] ~= '' and ARGV[28] or nil,
                 { hv.inv_version, hv.inv_os, hv.inv_config,
                   hv.inv_components })
inventory_flush(prefix)

if status_changed then
    local text = status_string(stored_status())
    if text == '' then
        redis.call('DEL', skey)
    else
        redis.call('SET', skey, text)
    end
end

-- what a worker keeps of a WebSocket agent that takes remote config, to
-- decide by itself what a fleet change means for it
-- (src/ngx_http_opamp_fanout.c): its config fields as they are now
local view = {}
if transport == 'websocket' and not disconnect and accepts_config(ARGV[5])
then
    for i, f in ipairs(config_fields) do
        view[i] = hv[f] or false
    end
end

return { full and 1 or 0, verdict, holder_ch or '', holder or '', offer,
         owed_hash, owed_files, components, command, message, extra, cs,
         packages, view }
