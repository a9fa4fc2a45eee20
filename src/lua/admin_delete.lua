-- admin_delete.lua: delete a config, or an operator's connection settings
-- or packages offer, and tell the workers.
--
-- KEYS[1]  the key to delete
-- KEYS[2]  <prefix>groups
-- KEYS[3]  <prefix>config_version (and its _scope and _log)
-- KEYS[4]  the agent hash for an agent's key, else the same as KEYS[1]
-- ARGV[1]  "agent", "group" or "fleet" (a fleet-wide key)
-- ARGV[2]  uid (canonical text) or group name
-- ARGV[3]  <prefix>fleet
--
-- Returns 1 when the key existed, 0 when not (nothing is changed then).

--@include lib/version_log.lua
--@include lib/holder.lua

if redis.call('DEL', KEYS[1]) == 0 then
    return 0
end

if ARGV[1] == 'group' then
    redis.call('ZREM', KEYS[2], ARGV[2])
end

-- what the change concerns (report.lua, keeps_desired())
local scope = 'none'
if ARGV[1] == 'agent' then
    scope = 'agent:' .. ARGV[2]
elseif ARGV[1] == 'group' then
    scope = 'all'
end
version_change(KEYS[3], scope)

if ARGV[1] == 'agent' then
    tell_holder(KEYS[4], ARGV[2])
else
    redis.call('PUBLISH', ARGV[3], 'config')
end

return 1
