-- admin_agent.lua: one agent's hash for the admin API, with the content it
-- shares with other agents in place of its references to it.
--
-- KEYS[1]  <prefix>agent:{<uid>}
-- ARGV[1]  key prefix
--
-- Returns the flat HGETALL of the agent, where each <field>_ref pair
-- (effective_config_ref, available_components_ref) is replaced by
-- <field> and the bytes of <prefix>shared:<kind>:<digest> ("" when that
-- is gone).

local kinds = { effective_config_ref = 'config',
                available_components_ref = 'components' }

local h = redis.call('HGETALL', KEYS[1])

for i = 1, #h, 2 do
    local kind = kinds[h[i]]
    if kind then
        h[i] = string.sub(h[i], 1, -5)
        h[i + 1] = redis.call('HGET', ARGV[1] .. 'shared:' .. kind .. ':'
                              .. h[i + 1], 'data') or ''
    end
end

return h
