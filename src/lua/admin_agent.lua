-- admin_agent.lua: one agent as the admin API shows it: its hash of small
-- fields, its status fields, the content it shares with other agents in
-- place of its references to it, and the attributes group selectors see.
--
-- KEYS[1]  <prefix>agent:{<uid>}
-- ARGV[1]  key prefix
--
-- Returns a flat list of field names and values: "instance_uid" (from
-- the key), the HGETALL of the agent hash, then the fields of
-- <prefix>status:{<uid>} (some stored compressed: docs/redis-schema.md),
-- where each <field>_ref pair (effective_config_ref,
-- available_components_ref) is replaced by <field> and the bytes of
-- <prefix>shared:<kind>:<digest> ("" when that is gone), and, when it has
-- a description or server-set attributes, "attributes": those that
-- selectors match, as a JSON object (the server-set ones winning);
-- "server_attributes" (opamp_agent_attribute) is a JSON object too.
-- Empty when there is no agent hash.

--@include lib/protobuf.lua
--@include lib/attributes.lua
--@include lib/status.lua

local kinds = { effective_config_ref = 'config',
                available_components_ref = 'components' }

local h = redis.call('HGETALL', KEYS[1])
if #h == 0 then
    return h
end

local uid = string.match(KEYS[1], '{([^{}]*)}$')
local out, desc, server = { 'instance_uid', uid }, nil, nil

local status = {}
for name, value in pairs(status_read(redis.call('GET', ARGV[1] .. 'status:{'
                                                .. uid .. '}'))) do
    status[#status + 1] = name
    status[#status + 1] = value
end

for _, list in ipairs({ h, status }) do
    for i = 1, #list, 2 do
        local name, value = list[i], list[i + 1]
        local kind = kinds[name]
        if kind then
            name = string.sub(name, 1, -5)
            value = redis.call('HGET', ARGV[1] .. 'shared:' .. kind .. ':'
                               .. value, 'data') or ''
        end
        if name == 'description' then
            desc = value
        end
        -- what nginx set (opamp_agent_attribute), as a JSON object
        if name == 'server_attributes' then
            server = value
            value = cjson.encode((attributes_of(value)))
        end
        -- a hash of schema 2 still has "attributes" and "instance_uid"
        if name ~= 'attributes' and name ~= 'instance_uid' then
            out[#out + 1] = name
            out[#out + 1] = value
        end
    end
end

if desc or server then
    local attrs = attributes_of(desc)
    -- the server-set ones win, as for selectors (lib/owed_config.lua)
    for k, v in pairs((attributes_of(server))) do
        attrs[k] = v
    end
    out[#out + 1] = 'attributes'
    out[#out + 1] = cjson.encode(attrs)
end

return out
