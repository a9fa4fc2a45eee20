-- check.lua: a config or group changed: what do these connected agents
-- need now?  All of a worker's WebSocket agents, in batches of up to 64,
-- each looked at with the owed_*() functions of report.lua
-- (lib/owed_config.lua, lib/owed.lua), storing what they note of an
-- offer but nothing of a message.  The layout is docs/redis-schema.md.
--
-- KEYS[1]  <prefix>config_version
-- KEYS[2]  <prefix>groups
-- ARGV[1]  now, Unix ms
-- ARGV[2]  key prefix
-- ARGV[3]  opamp_agent_timeout, ms
-- ARGV[4]  hash of the module's own part of the connection settings
--          offer (the OpAMP heartbeat interval), hex
-- ARGV[5]  "1": send the owed config even if it was offered before
-- ARGV[6..] pairs of instance uid (canonical text) and the connection id
--          "<server_id>:<pid>:<n>" the worker holds it on; an agent that
--          another connection holds now, or none, is left out
--
-- Returns
--   { { { index (1-based pair), then elements 5 to 13 of report.lua's
--         answer, but the owed config's key in place of its fields },
--       ... only agents owed something; agents owed the same config and
--       nothing else share one entry whose first element is the array of
--       their indexes },
--     { config key, its fields (HGETALL), ... once per owed key },
--     { { index, then config_version, desired_config, desired_hash,
--         offered_hash, offered_ms, config_hash and failed_hash as
--         stored now ("": none) }, ... each agent checked that takes
--         remote config } }

--@include lib/protobuf.lua
--@include lib/attributes.lua
--@include lib/status.lua
--@include lib/state.lua
--@include lib/caps.lua
--@include lib/groups.lua
--@include lib/rollout.lua
--@include lib/owed_config.lua
--@include lib/owed.lua
--@include lib/gauges.lua

version_key, groups_key = KEYS[1], KEYS[2]
now_text, now = ARGV[1], tonumber(ARGV[1])
prefix, timeout, cs_offer = ARGV[2], tonumber(ARGV[3]), ARGV[4]

local force = ARGV[5] == '1'
local out, owed_keys, same, views = {}, {}, {}, {}
-- the place of each config field in a view
local view_place = {}
for j, f in ipairs(config_fields) do
    view_place[f] = j + 1
end
local check_fields = { unpack(config_fields) }
local nc = #config_fields
for _, f in ipairs({ 'capabilities', 'conn', 'connected',
                     'custom_capability_names', 'cs_hash', 'cs_again',
                     'cs_offered_ms', 'token_ms' }) do
    check_fields[#check_fields + 1] = f
end
-- after a change that makes agents be matched again, their own
-- configs are looked for at once
local wide = not read_scope().narrow
if wide then
    local own = {}
    for i = 6, #ARGV - 1, 2 do
        own[#own + 1] = prefix .. 'config:agent:{' .. ARGV[i] .. '}'
    end
    own_configs = #own > 0 and redis.call('EXISTS', unpack(own)) > 0
end
for i = 6, #ARGV - 1, 2 do
    uid = ARGV[i]
    key = prefix .. 'agent:{' .. uid .. '}'
    skey = prefix .. 'status:{' .. uid .. '}'
    status_t = nil
    server_attrs = nil
    acfg = nil
    -- one read: the config fields (1 to nc), then the rest
    local cur = redis.call('HMGET', key, unpack(check_fields))
    local caps = cur[nc + 1]
    if caps and cur[nc + 2] == ARGV[i + 1] and cur[nc + 3] == '1' then
        local set = {}
        local h, _, ckey = owed_config(set, caps, '', nil, force, now,
                                       cur)
        token_agent, mint = cur[nc + 8], nil
        local offer, extra, cs = owed_settings(set, caps, cur[nc + 5],
                                               cur[nc + 6], cur[nc + 7])
        local packages = owed_packages(set, caps, force, now)
        if #set > 0 then
            redis.call('HSET', key, unpack(set))
            -- a group config or selector changed what it is owed
            for j = 1, #set, 2 do
                if set[j] == 'desired_hash' or set[j] == 'desired_config' then
                    gauge_update(key)
                    break
                end
            end
        end
        if accepts_config(caps) then
            -- what the worker keeps of the agent (report.lua's view)
            local view = { (i - 4) / 2 }
            for j = 1, #config_fields do
                view[j + 1] = cur[j] or ''
            end
            for j = 1, #set, 2 do
                if view_place[set[j]] then
                    view[view_place[set[j]]] = set[j + 1]
                end
            end
            views[#views + 1] = view
        end
        local command = ''
        if h == '' and offer == 0 and packages == '' then
            command = owed_command(caps)
        end
        local message = owed_message(cur[nc + 4])
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
                e[1][#e[1] + 1] = (i - 4) / 2
            else
                out[#out + 1] = { (i - 4) / 2, offer, h, ckey, 0,
                                  command, message, extra, cs, packages }
            end
        end
    end
end
gauge_flush(prefix .. 'fleet:gauges')
local files = {}
for ckey in pairs(owed_keys) do
    files[#files + 1] = ckey
    files[#files + 1] = files_of[ckey]
end
return { out, files, views }
