-- lib/short_way.lua, included after lib/state.lua by report.lua (one
-- agent's heartbeat) and beats.lua (a worker's batch of them).  Reads
-- prefix, now_text, now and version_key of lib/state.lua.
--
-- The common message of a fleet: a heartbeat in sequence on the same
-- connection from an agent that is owed nothing, with nothing changed
-- since that was found, whatever its capabilities.  An agent with an
-- offer out unacknowledged is owed nothing until the offer may be made
-- again (its settled_until): an agent that accepts a config and never
-- reports its status (no ReportsRemoteConfig) polls so for ever.  Only
-- its sequence and liveness are stored.  What a control plane writes
-- without the admin API is still seen: configs, connection settings and
-- packages with INCR config_version (in the mark, see settle_mark() in
-- report.lua) or the agent's settled emptied, commands and messages for
-- the agent by their keys.

-- the config_version in front of the mark, read once per call
local vmark = nil

-- takes the short way if the heartbeat can (true): k the agent's key, u
-- its uid, sq and prev its sequence_num and the one before, stored its
-- stored sequence_num, settled and settled_until (nil: none), mark its
-- beat_mark() (report.lua; the worker digests it for beats.lua), checks
-- what else to check: '' the agent's outbox, '1' its command key too (it
-- accepts restart), 'L' nothing else (a lease renewal: the worker that
-- holds the agent answered its heartbeats since the last check and
-- nothing was published for it, beats.lua), expires its new expires_ms;
-- members: the fleet index entries to add, or nil to add this one at once
local function short_way(k, u, sq, prev, stored, mark, checks, expires,
                         members)
    if not (stored[1] == prev and stored[2]) then
        return false
    end
    -- an offer out since then is due again
    if stored[3] and now >= (tonumber(stored[3]) or 0) then
        return false
    end
    vmark = vmark or ((redis.call('GET', version_key) or '0') .. ' ')
    if stored[2] ~= vmark .. mark then
        return false
    end
    -- a command or message for the agent (connection settings and
    -- packages change config_version or empty settled)
    if checks ~= 'L' then
        local waiting
        if checks == '1' then
            waiting = redis.call('EXISTS', prefix .. 'command:{' .. u .. '}',
                                 prefix .. 'outbox:{' .. u .. '}')
        else
            waiting = redis.call('EXISTS', prefix .. 'outbox:{' .. u .. '}')
        end
        if waiting ~= 0 then
            return false
        end
        -- what it reported is gone (a control plane deleted its status
        -- string, or Redis lost it): the long way asks for its full state
        if redis.call('EXISTS', prefix .. 'status:{' .. u .. '}') == 0 then
            return false
        end
    end
    redis.call('HSET', k, 'sequence_num', sq, 'last_seen_ms', now_text,
               'expires_ms', expires)
    if members then
        members[#members + 1] = now_text
        members[#members + 1] = u
    else
        redis.call('ZADD', prefix .. 'agents', now_text, u)
    end
    return true
end
