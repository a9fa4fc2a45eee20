-- lib/version_log.lua, included by the admin scripts that change configs
-- or fleet-wide offers: what the change that makes config_version this
-- value concerns, in <prefix>config_version_scope (the latest) and
-- <prefix>config_version_log (the latest VERSION_LOG, newest first), so
-- that a worker that learns of a fleet change can tell, for each agent it
-- holds, whether every change since the agent was last resolved leaves it
-- where it was (src/ngx_http_opamp_fanout.c), and report.lua whether the
-- last one does (keeps_desired() of lib/owed_config.lua).  Scopes:
-- "none" (no config: connection settings or packages of the fleet),
-- "agent:<uid>", "group:<name>" (its files only), "all".
local VERSION_LOG = 64

-- vkey: <prefix>config_version; increments it and returns the new value
local function version_change(vkey, scope)
    local v = redis.call('INCR', vkey)
    local entry = v .. ' ' .. scope
    redis.call('SET', vkey .. '_scope', entry)
    redis.call('LPUSH', vkey .. '_log', entry)
    redis.call('LTRIM', vkey .. '_log', 0, VERSION_LOG - 1)
    return v
end
