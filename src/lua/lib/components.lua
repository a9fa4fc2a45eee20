-- lib/components.lua, included after lib/protobuf.lua by report.lua: the
-- short reader of an AvailableComponents message.

-- an AvailableComponents message (protobuf): its hash, and whether it
-- lists components (field 1) or carries the hash only (field 2, as
-- opamp-go sends it until the server sets ReportAvailableComponents).
-- The worker puts the hash first (docs/redis-schema.md), so two fields
-- tell both; at most four are read, whoever wrote the bytes, so that a
-- hash behind a long list (bytes written by another writer) is not
-- found: nil, and the agent is asked for its list again.
local function components_of(pb)
    local i, n, hash, list = 1, #pb, nil, false
    for _ = 1, 4 do
        if i > n then
            break
        end
        local field, wire, a, b, past = next_field(pb, i, n)
        if not field then
            return nil, false
        end
        if field == 1 and wire == 2 then
            list = true
        elseif field == 2 and wire == 2 then
            hash = string.sub(pb, a, b)
        end
        i = past
    end
    return hash, list
end
