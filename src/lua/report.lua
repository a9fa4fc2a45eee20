-- report.lua: persist one AgentToServer status report and say what the
-- server owes the agent.  One call per message; touches one key (one
-- Redis Cluster slot).  The layout is docs/redis-schema.md.
--
-- KEYS[1]  <prefix>agent:{<uid>}
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
-- ARGV[15] hash of the connection settings to offer, hex; "" when the
--          agent does not accept them
-- ARGV[16] presence mask of the status fields below (bit 0: ARGV[17])
-- ARGV[17..24] description, health, effective_config,
--          remote_config_status, package_statuses, custom_capabilities,
--          available_components, connection_settings_status (protobuf)
--
-- Returns { full_state (0/1), verdict (0 ok, 1 takeover, 2 duplicate),
--           holder channel, holder conn, offer connection settings (0/1) }

local key = KEYS[1]
local now = tonumber(ARGV[1])
local seq, prev_seq = ARGV[3], ARGV[4]
local conn, transport = ARGV[6], ARGV[7]
local first, disconnect = ARGV[12] == '1', ARGV[13] == '1'
local mask = tonumber(ARGV[16])

local fields = { 'description', 'health', 'effective_config',
                 'remote_config_status', 'package_statuses',
                 'custom_capabilities', 'available_components',
                 'connection_settings_status' }

-- decimal strings without leading zeros: compare as numbers would, but
-- without Lua's 53-bit doubles losing 64-bit sequence numbers
local function less(a, b)
    return #a < #b or (#a == #b and a < b)
end

local cur = redis.call('HMGET', key, 'sequence_num', 'description',
                       'connected', 'expires_ms', 'conn', 'transport',
                       'channel', 'cs_hash', 'first_seen_ms')
local stored_seq, stored_desc, connected, expires, holder, holder_tr,
      holder_ch, cs_hash, first_seen =
      cur[1], cur[2], cur[3], cur[4], cur[5], cur[6], cur[7], cur[8], cur[9]

local has_desc = mask % 2 == 1
local verdict = 0

-- another live WebSocket connection holds this uid
if first and holder and holder ~= conn and connected == '1'
   and holder_tr == 'websocket' and tonumber(expires or '0') > now
then
    if stored_seq and stored_seq == prev_seq then
        verdict = 1
    else
        return { 0, 2, holder_ch or '', holder, 0 }
    end
end

local full = false

if not stored_seq then
    full = not has_desc
else
    if stored_seq ~= prev_seq
       and not (has_desc and less(seq, stored_seq))
    then
        full = true
    end

    if not has_desc and not stored_desc then
        full = true
    end
end

local set = { 'schema', '1', 'instance_uid', ARGV[2],
              'sequence_num', seq, 'capabilities', ARGV[5],
              'last_seen_ms', ARGV[1],
              'expires_ms', tostring(now + tonumber(ARGV[11])),
              'transport', transport, 'conn', conn, 'server_id', ARGV[8],
              'worker_pid', ARGV[9], 'channel', ARGV[10] }

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

for i, name in ipairs(fields) do
    if mask % 2 == 1 then
        set[#set + 1] = name
        set[#set + 1] = ARGV[16 + i]
    end
    mask = (mask - mask % 2) / 2
end

if ARGV[14] ~= '' then
    set[#set + 1] = 'healthy'
    set[#set + 1] = ARGV[14]
end

local offer = 0

if ARGV[15] ~= '' and (cs_hash ~= ARGV[15] or full) then
    offer = 1
    set[#set + 1] = 'cs_hash'
    set[#set + 1] = ARGV[15]
end

redis.call('HSET', key, unpack(set))

return { full and 1 or 0, verdict, holder_ch or '', holder or '', offer }
