-- admin_push.lua: something for one agent or for the fleet: a command, a
-- custom message, connection settings or a packages offer; then tell the
-- worker that holds the agent (or every worker).
--
-- KEYS[1]  the key written: <prefix>command:{<uid>}, <prefix>outbox:{<uid>},
--          <prefix>connection_settings[:{<uid>}], <prefix>packages[:{<uid>}],
--          or for "retry" the agent hash
-- KEYS[2]  the agent hash <prefix>agent:{<uid>}, or "" for the fleet
-- KEYS[3]  <prefix>config_version (and its _scope and _log)
-- ARGV[1]  "set" (string), "rpush" (list), "offer" (packages hash), or
--          "retry": the agent's config is offered again (POST
--          agents/<uid>/retry-config)
-- ARGV[2]  the value (for "offer": the PackagesAvailable bytes)
-- ARGV[3]  for "offer": all_packages_hash, hex
-- ARGV[4]  uid (canonical text), or "" for the fleet
-- ARGV[5]  <prefix>fleet
--
-- Returns 0 when the agent is unknown (nothing is written), else 1.

--@include lib/version_log.lua
--@include lib/holder.lua

if KEYS[2] ~= '' and redis.call('EXISTS', KEYS[2]) == 0 then
    return 0
end

if ARGV[1] == 'retry' then
    -- the agent is offered its config again, even one it failed or was
    -- offered just now (lib/owed_config.lua)
    redis.call('HDEL', KEYS[1], 'failed_hash', 'offered_hash', 'offered_ms')
elseif ARGV[1] == 'set' then
    redis.call('SET', KEYS[1], ARGV[2])
elseif ARGV[1] == 'rpush' then
    redis.call('RPUSH', KEYS[1], ARGV[2])
else
    redis.call('DEL', KEYS[1])
    redis.call('HSET', KEYS[1], 'offer', ARGV[2], 'hash', ARGV[3])
end

-- agents that were owed nothing look again at their next message
-- (report.lua: "settled")
if KEYS[2] == '' then
    -- no config changed (report.lua, keeps_desired())
    version_change(KEYS[3], 'none')
    redis.call('PUBLISH', ARGV[5], 'config')
else
    redis.call('HSET', KEYS[2], 'settled', '')
    tell_holder(KEYS[2], ARGV[4])
end

return 1
