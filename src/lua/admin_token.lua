-- admin_token.lua: DELETE agents/<uid>/token: the agent's token, and the
-- next one on its way, are good no more, and neither is the enrollment
-- credential for this uid (docs/security.md, Tokens).  Its settled goes
-- too, so that the next heartbeat of an agent still connected, to any
-- host, takes the long way, which refuses it.
--
-- KEYS[1]  <prefix>agent:{<uid>}
-- ARGV[1]  now, Unix ms
--
-- Returns 1 when the agent was known, 0 when not.

--@include lib/holder.lua

if redis.call('EXISTS', KEYS[1]) == 0 then
    return 0
end
redis.call('HDEL', KEYS[1], 'token_sha256', 'token_next_sha256', 'cs_sent',
           'settled', 'settled_until')
redis.call('HSET', KEYS[1], 'token_revoked_ms', ARGV[1], 'token_ms', ARGV[1])
-- its worker may answer its heartbeats itself: told, it asks Redis at
-- the next one
tell_holder(KEYS[1], string.match(KEYS[1], '{([^{}]*)}$'))
return 1
