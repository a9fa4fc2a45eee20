-- rollout_tick.lua: the timer's step of the staged rollouts
-- (lib/rollout_steps.lua), run by every worker of every host once a
-- second (src/ngx_http_opamp_rollout.c): for each running rollout, a
-- gate the counts break stops it (paused, or rolled back when its plan
-- says so), else a stage whose soak time has passed gives way to the
-- next, and the last to the end.  No leader: the call is atomic, and a
-- step already made by another worker is not made again.  Its cost is
-- a few commands a rollout, whatever the number of agents.
--
-- KEYS[1]  <prefix>rollouts (and <prefix>rollouts:step, the mark of
--          the worker that steps this second)
-- KEYS[2]  <prefix>fleet:gauges
-- KEYS[3]  <prefix>config_version (and its _scope and _log)
-- ARGV[1]  now, Unix ms
-- ARGV[2]  key prefix
-- ARGV[3]  <prefix>fleet
--
-- Returns the number of steps made.

--@include lib/versions.lua
--@include lib/version_log.lua
--@include lib/rollout.lua
--@include lib/rollout_steps.lua

local now, p, fleet = tonumber(ARGV[1]), ARGV[2], ARGV[3]
local steps = 0

-- one worker of the fleet steps a second: the others of all hosts find
-- the mark of this second and go (two commands each, with or without
-- rollouts); one that runs slow still leaves the next second to another
if redis.call('ZCARD', KEYS[1]) == 0
   or not redis.call('SET', KEYS[1] .. ':step', ARGV[1], 'PX', 900, 'NX')
then
    return 0
end

-- at most 64 rollouts a call (the groups' number bounds them anyway)
for _, name in ipairs(redis.call('ZRANGE', KEYS[1], 0, 63)) do
    local k = p .. 'rollout:group:' .. name
    local ro = ro_record(k)
    if not ro or (ro.state ~= 'running' and ro.state ~= 'paused') then
        -- a record deleted or ended by hand
        redis.call('ZREM', KEYS[1], name)
    elseif not (ro.to_hash and tonumber(ro.stage) and tonumber(ro.stage_ms)
                and tonumber(ro.cutoff) and ro.stages and ro.group)
    then
        -- a record written by hand without what a step needs
        redis.call('HSET', k, 'state', 'aborted',
                   'reason', 'the rollout record is incomplete',
                   'ended_ms', ARGV[1], 'updated_ms', ARGV[1])
        redis.call('ZREM', KEYS[1], name)
        -- the agents it reached go back to the group's version
        ro_tell(KEYS[3], fleet, name)
        steps = steps + 1
    elseif redis.call('EXISTS', p .. 'config:group:' .. name) == 0 then
        -- the group was deleted under it: nothing to roll out to
        redis.call('HSET', k, 'state', 'aborted',
                   'reason', 'the group was deleted', 'ended_ms', ARGV[1],
                   'updated_ms', ARGV[1])
        redis.call('ZREM', KEYS[1], name)
        steps = steps + 1
    elseif ro.state == 'running' then
        local reason = ro_gate(ro, ro_counts(KEYS[2], name, ro.to_hash), now)
        if reason then
            if ro.on_gate == 'rollback' then
                ro_end(p, k, ro, 'rolled_back', reason, now, KEYS[3], fleet,
                       KEYS[1])
            else
                redis.call('HSET', k, 'state', 'paused', 'reason', reason,
                           'updated_ms', ARGV[1])
            end
            steps = steps + 1
        else
            local soak = ro_words(ro.soak)
            local i = tonumber(ro.stage)
            if now - tonumber(ro.stage_ms) >= tonumber(soak[i] or '0') then
                ro_advance(p, k, ro, now, KEYS[3], fleet, KEYS[1])
                steps = steps + 1
            end
        end
    end
end

return steps
