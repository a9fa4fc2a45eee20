-- rollout_action.lua: an operator's step of a group's staged rollout
-- (docs/admin-api.md, "Staged rollouts"; lib/rollout_steps.lua): pause,
-- resume, advance, abort, rollback; or, with "show", its record, and with
-- "list" those of every rollout running or paused (at most 64).
--
-- KEYS[1]  <prefix>rollout:group:<name>
-- KEYS[2]  <prefix>rollouts
-- KEYS[3]  <prefix>fleet:gauges
-- KEYS[4]  <prefix>config_version (and its _scope and _log)
-- ARGV[1]  the action
-- ARGV[2]  now, Unix ms
-- ARGV[3]  key prefix
-- ARGV[4]  <prefix>fleet
-- ARGV[5]  who (opamp_admin_author), may be empty
--
-- Returns { "ok", the record's fields and gate counts as pairs ... },
-- { "list", { pairs ... }, ... } or { "error", status, reason }.

--@include lib/versions.lua
--@include lib/version_log.lua
--@include lib/rollout.lua
--@include lib/rollout_steps.lua

local action, now, p, fleet = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]

if action == 'list' then
    local out = { 'list' }
    for _, name in ipairs(redis.call('ZRANGE', KEYS[2], 0, 63)) do
        local ro = ro_record(p .. 'rollout:group:' .. name)
        if ro then
            out[#out + 1] = ro_answer(KEYS[3], ro)
        end
    end
    return out
end

local k = KEYS[1]
local ro = ro_record(k)

if not ro then
    return { 'error', '404', 'no rollout of this group' }
end

local active = ro.state == 'running' or ro.state == 'paused'
local by = ARGV[5] ~= '' and (' by ' .. ARGV[5]) or ''

if action ~= 'show' and not active then
    return { 'error', '409', 'the rollout is ' .. ro.state }
end

if action == 'pause' then
    if ro.state ~= 'running' then
        return { 'error', '409', 'the rollout is paused already' }
    end
    redis.call('HSET', k, 'state', 'paused', 'reason', 'paused' .. by,
               'updated_ms', ARGV[2])

elseif action == 'resume' then
    if ro.state ~= 'paused' then
        return { 'error', '409', 'the rollout is running' }
    end
    -- the gates count again from here, and the stage soaks anew
    local c = ro_counts(KEYS[3], ro.group, ro.to_hash)
    redis.call('HSET', k, 'state', 'running', 'reason', '',
               'stage_ms', ARGV[2], 'updated_ms', ARGV[2],
               'base_failed', tostring(c.failed),
               'base_unhealthy', tostring(c.unhealthy),
               'base_disconnected', tostring(c.disconnected))

elseif action == 'advance' then
    ro_advance(p, k, ro, now, KEYS[4], fleet, KEYS[2])

elseif action == 'abort' then
    ro_end(p, k, ro, 'aborted', 'aborted' .. by, now, KEYS[4], fleet,
           KEYS[2])

elseif action == 'rollback' then
    ro_end(p, k, ro, 'rolled_back', 'rolled back' .. by, now, KEYS[4],
           fleet, KEYS[2])

elseif action ~= 'show' then
    return { 'error', '400', 'unknown action' }
end

local out = { 'ok' }
for _, v in ipairs(ro_answer(KEYS[3], ro_record(k))) do
    out[#out + 1] = v
end
return out
