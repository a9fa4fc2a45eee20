-- admin_identity.lua: DELETE agents/<uid>/identity: the uid is bound to
-- no identity any more, and the next identity that reports it owns it
-- (docs/security.md).  The agent's settled goes too, so that the next
-- heartbeat of an agent still connected takes the long way, which binds
-- the uid again to the identity it comes with.
--
-- KEYS[1]  <prefix>agent:{<uid>}
--
-- Returns 1 when a binding was released, 0 when there was none.

--@include lib/holder.lua

if redis.call('HDEL', KEYS[1], 'identity', 'identity_bound_ms') == 0 then
    return 0
end
redis.call('HDEL', KEYS[1], 'settled', 'settled_until')
-- its worker may answer its heartbeats itself: told, it asks Redis at
-- the next one
tell_holder(KEYS[1], string.match(KEYS[1], '{([^{}]*)}$'))
return 1
