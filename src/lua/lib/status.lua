-- lib/status.lua, included after lib/protobuf.lua: <prefix>status:{<uid>},
-- the status fields an agent reported, kept as one string (docs/redis-
-- schema.md): each field as protobuf writes a length-delimited field, its
-- tag (the field's number in AgentToServer), its length and its bytes, in
-- ascending order of number.  One string costs Redis far less than a hash
-- of long values; the scripts read and write it whole (about a KB).

local status_numbers = { description = 3, health = 5, effective_config = 6,
                         remote_config_status = 7, package_statuses = 8,
                         custom_capabilities = 12, available_components = 14,
                         connection_settings_status = 15 }
local status_names = {}
for name, number in pairs(status_numbers) do
    status_names[number] = name
end
local status_order = { 'description', 'health', 'effective_config',
                       'remote_config_status', 'package_statuses',
                       'custom_capabilities', 'available_components',
                       'connection_settings_status' }

-- the fields of a stored string as name -> bytes (unknown numbers, and
-- whatever follows something malformed, are left out).  The worker writes
-- at most eight fields; at most STATUS_FIELDS are read of what anyone
-- else may have written, so that a string of many tiny fields costs no
-- more than a real one.
local STATUS_FIELDS = 32

local function status_read(s)
    local t = {}
    if not s then
        return t
    end
    local i, n, left = 1, #s, STATUS_FIELDS
    while i <= n and left > 0 do
        left = left - 1
        local field, wire, a, b, past = next_field(s, i, n)
        if not field then
            break
        end
        if wire == 2 and status_names[field] then
            t[status_names[field]] = string.sub(s, a, b)
        end
        i = past
    end
    return t
end

-- the description of a stored string alone, without reading the rest:
-- it is the first field when it is there (fields are in ascending order
-- and its number, 3, is the lowest); nil when there is none
local function status_description(s)
    if not s or string.byte(s, 1) ~= 26 then
        return nil
    end
    local field, wire, a, b = next_field(s, 1, #s)
    if field ~= 3 or wire ~= 2 then
        return nil
    end
    return string.sub(s, a, b)
end

-- the string of fields t (name -> bytes)
local function status_string(t)
    local out = {}
    for _, name in ipairs(status_order) do
        if t[name] then
            out[#out + 1] = len_field(status_numbers[name], t[name])
        end
    end
    return table.concat(out)
end
