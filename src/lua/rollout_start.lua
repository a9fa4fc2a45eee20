-- rollout_start.lua: a group's new config as a staged rollout
-- (docs/admin-api.md, "Staged rollouts"): the new version is recorded,
-- the group keeps its current files, which every agent outside the stage
-- is owed, and the first stage begins (lib/rollout.lua); or, as a dry
-- run, only the number of agents each stage would reach now.
--
-- KEYS[1]  <prefix>config:group:<name>
-- KEYS[2]  <prefix>versions:group:<name>
-- KEYS[3]  <prefix>config_version (and its _scope and _log)
-- KEYS[4]  <prefix>rollout:group:<name>
-- KEYS[5]  <prefix>rollouts
-- KEYS[6]  <prefix>group_members:<name>
-- ARGV[1]  group name
-- ARGV[2]  <prefix>fleet
-- ARGV[3]  now, Unix ms
-- ARGV[4]  key prefix
-- ARGV[5]  versions kept per config (opamp_config_versions)
-- ARGV[6]  author, may be empty
-- ARGV[7]  note, may be empty
-- ARGV[8]  stages: "c<count>" or "f<fraction>", space-separated
-- ARGV[9]  soak per stage, ms, space-separated
-- ARGV[10] gates: lines "<gate> c<count>|f<share>[ <within ms>]"
-- ARGV[11] on a gate: "pause" or "rollback"
-- ARGV[12] "1": a dry run
-- ARGV[13] config_hash of the new files, hex; "": those of ARGV[14]
-- ARGV[14] the version whose files to roll out (a staged rollback), or ""
-- ARGV[15] selector, ARGV[16] priority: the group's own (a rollout
--          changes files only; not with ARGV[14])
-- ARGV[17..] file name, body, content type, ... (not with ARGV[14])
--
-- Returns { "ok", config_version, version, rollout id, agents the first
-- stage reaches, config_hash } or { "dry", agents of the group, agents of each
-- stage ... }, or { "error", status, reason }.

--@include lib/versions.lua
--@include lib/version_log.lua
--@include lib/rollout.lua
--@include lib/rollout_steps.lua

local name, fleet, now, p = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]

local g = redis.call('HMGET', KEYS[1], 'hash', 'version', 'selector',
                     'priority')
if not g[1] then
    return { 'error', '404',
             'no such group: a staged rollout changes the files of a '
             .. 'group that exists' }
end

local state = redis.call('HGET', KEYS[4], 'state')
if state == 'running' or state == 'paused' then
    return { 'error', '409', 'a rollout of this group is in progress' }
end

local hash, fields, from = ARGV[13], {}, nil
if ARGV[14] ~= '' then
    local old = version_record(KEYS[2], ARGV[14])
    if not old then
        return { 'error', '404', 'no such version' }
    end
    local listed
    hash, from = old[2], ARGV[14]
    listed, fields = content_files(p, hash)
else
    if ARGV[15] ~= (g[3] or '') or ARGV[16] ~= (g[4] or '0') then
        return { 'error', '400',
                 'a staged rollout changes files only: the selector and '
                 .. 'priority must be the group\'s own' }
    end
    fields = argv_files(17)
end

if hash == g[1] then
    return { 'error', '409',
             'nothing to roll out: the group has this config already' }
end

local specs = ro_words(ARGV[8])

if ARGV[12] == '1' then
    local n = redis.call('ZCARD', KEYS[6])
    local out = { 'dry', n }
    for i = 1, #specs do
        out[#out + 1] = i == #specs and n or ro_stage_target(specs[i], n)
    end
    return out
end

local n = add_version(KEYS[2], p, tonumber(ARGV[5]),
                      { hash = hash, ms = ARGV[3], author = ARGV[6],
                        note = ARGV[7], selector = g[3] or '',
                        priority = g[4] or '0', from = from }, fields)

local cutoff, target = ro_stage_bound(p, name, specs, 1, 0, 0)
local id = redis.call('INCR', p .. 'rollout_id')

redis.call('DEL', KEYS[4])
redis.call('HSET', KEYS[4], 'id', tostring(id), 'group', name,
           'state', 'running', 'from_hash', g[1],
           'from_version', g[2] or '', 'to_hash', hash,
           'to_version', tostring(n), 'stages', ARGV[8], 'soak', ARGV[9],
           'gates', ARGV[10], 'on_gate', ARGV[11], 'stage', '1',
           'stage_ms', ARGV[3], 'cutoff', string.format('%d', cutoff),
           'target', tostring(target), 'created_ms', ARGV[3],
           'updated_ms', ARGV[3], 'author', ARGV[6], 'note', ARGV[7],
           'base_failed', '0', 'base_unhealthy', '0',
           'base_disconnected', '0')
redis.call('ZADD', KEYS[5], now, name)

return { 'ok', ro_tell(KEYS[3], fleet, name), n, id, target, hash }
