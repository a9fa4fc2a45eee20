-- admin_version_rollback.lua: put an earlier version of a config back, as
-- a new version, and tell the workers as a PUT does (docs/admin-api.md,
-- "Config versions").
--
-- KEYS[1..5] as admin_config_set.lua's
-- ARGV[1]  "agent" or "group"
-- ARGV[2]  uid (canonical text) or group name
-- ARGV[3]  <prefix>fleet
-- ARGV[4]  now, Unix ms
-- ARGV[5]  the version to put back
-- ARGV[6]  key prefix
-- ARGV[7]  versions kept per config (opamp_config_versions)
-- ARGV[8]  author, may be empty
-- ARGV[9]  note, may be empty
--
-- Returns { new value of <prefix>config_version, the config's version,
-- its config_hash }, {} when there is no such version, or { "error",
-- "409", reason } while a staged rollout of the group runs.

--@include lib/versions.lua
--@include lib/version_log.lua
--@include lib/holder.lua
--@include lib/config_write.lua

local refused = rollout_in_progress(ARGV[6], ARGV[1], ARGV[2])
if refused then
    return refused
end

local old = version_record(KEYS[5], ARGV[5])
if not old then
    return {}
end

local _, fields = content_files(ARGV[6], old[2])

local rec = { hash = old[2], ms = ARGV[4], author = ARGV[8],
              note = ARGV[9], from = ARGV[5] }
if ARGV[1] == 'group' then
    rec.selector = old[6]
    rec.priority = old[7] ~= '' and old[7] or '0'
end

local n = config_version_of(KEYS, KEYS[5], ARGV[6], tonumber(ARGV[7]),
                            ARGV[1], rec, fields)

return { config_write(KEYS, ARGV[1], ARGV[2], ARGV[3], ARGV[4], rec.hash,
                      rec.selector or '', rec.priority or '0', fields, n),
         n, rec.hash }
