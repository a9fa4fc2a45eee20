-- admin_config_set.lua: replace a config atomically, record it as a
-- version, and tell the workers (docs/redis-schema.md, "Remote
-- configuration" and "Config versions").
--
-- KEYS[1]  the config hash: <prefix>config:agent:{<uid>} or
--          <prefix>config:group:<name>
-- KEYS[2]  <prefix>groups
-- KEYS[3]  <prefix>config_version (and its _scope and _log)
-- KEYS[4]  the agent hash <prefix>agent:{<uid>} (agent configs), or the
--          same as KEYS[1] for groups
-- KEYS[5]  its history: <prefix>versions:agent:{<uid>} or
--          <prefix>versions:group:<name>
-- ARGV[1]  "agent" or "group"
-- ARGV[2]  uid (canonical text) or group name
-- ARGV[3]  <prefix>fleet, the channel of every worker
-- ARGV[4]  now, Unix ms
-- ARGV[5]  config_hash, hex
-- ARGV[6]  selector (groups)
-- ARGV[7]  priority (groups)
-- ARGV[8]  key prefix
-- ARGV[9]  versions kept per config (opamp_config_versions)
-- ARGV[10] author (opamp_admin_author), may be empty
-- ARGV[11] note (the OpAMP-Note header), may be empty
-- ARGV[12..] file name, body, content type, file name, body, ...
--
-- Returns { new value of <prefix>config_version, the config's version },
-- or { "error", "409", reason } while a staged rollout of the group runs.

--@include lib/versions.lua
--@include lib/version_log.lua
--@include lib/holder.lua
--@include lib/config_write.lua

local refused = rollout_in_progress(ARGV[8], ARGV[1], ARGV[2])
if refused then
    return refused
end

local fields = argv_files(12)

local rec = { hash = ARGV[5], ms = ARGV[4], author = ARGV[10],
              note = ARGV[11] }
if ARGV[1] == 'group' then
    rec.selector = ARGV[6]
    rec.priority = ARGV[7]
end

local n = config_version_of(KEYS, KEYS[5], ARGV[8], tonumber(ARGV[9]),
                            ARGV[1], rec, fields)

return { config_write(KEYS, ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5],
                      ARGV[6], ARGV[7], fields, n), n }
