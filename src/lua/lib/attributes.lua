-- lib/attributes.lua, included after lib/protobuf.lua by the scripts
-- that match selectors: the attributes of an AgentDescription (protobuf,
-- as the worker stored it) as a table of key -> string, the way
-- selectors see them: identifying and non-identifying attributes alike
-- (an identifying one wins over a non-identifying one of the same key),
-- strings as they are, booleans as "true"/"false", integers in decimal;
-- other kinds of values are not selectable.  This reader stops at
-- anything it does not expect, keeping what it read so far.

-- decimal text of limbs (base 1e7, least significant first)
local function limbs_text(l)
    local s = tostring(l[#l])
    for k = #l - 1, 1, -1 do
        s = s .. string.format('%07d', l[k])
    end
    return s
end

-- int64 of a varint's groups, in decimal: exact for all 64 bits (Lua's
-- numbers are doubles), two's complement for negatives.  Values within
-- 2^53 either way, which doubles hold exactly, take a short way.
local function int64_text(g)
    local top = #g
    if top <= 7 then
        local v, mul = 0, 1
        for k = 1, top do
            v, mul = v + g[k] * mul, mul * 128
        end
        return string.format('%.0f', v)
    end
    -- negative, magnitude at most 2^53: bits 53 to 63 all set
    if top == 10 and g[10] % 2 == 1 and g[9] == 127
       and math.floor(g[8] / 16) == 7
    then
        local v, mul = 0, 1
        for k = 1, 7 do
            v, mul = v + g[k] * mul, mul * 128
        end
        v = v + (g[8] % 16) * mul
        return '-' .. string.format('%.0f', 2 ^ 53 - v)
    end
    local l = { 0 }
    -- bit 63 is the low bit of the tenth group; higher bits are dropped
    local neg = false
    if top == 10 then
        neg = g[10] % 2 == 1
        top = 9
    end
    for k = top, 1, -1 do
        local carry = g[k]
        for m = 1, #l do
            local v = l[m] * 128 + carry
            l[m], carry = v % 10000000, math.floor(v / 10000000)
        end
        while carry > 0 do
            l[#l + 1], carry = carry % 10000000, math.floor(carry / 10000000)
        end
    end
    if not neg then
        return limbs_text(l)
    end
    -- the value is 2^63 + low 63 bits (l); as int64 it is -(2^63 - l)
    local r, borrow = { 4775808, 7203685, 92233 }, 0   -- 2^63
    local out = {}
    for m = 1, 3 do
        local v = r[m] - (l[m] or 0) - borrow
        if v < 0 then
            v, borrow = v + 10000000, 1
        else
            borrow = 0
        end
        out[m] = v
    end
    while #out > 1 and out[#out] == 0 do
        out[#out] = nil
    end
    return '-' .. limbs_text(out)
end

-- A description the worker stored is canonical (docs/redis-schema.md):
-- protobuf-c's encoding of what it decoded, one value per KeyValue, at
-- most 128 attributes and 65,536 bytes, so that reading it costs a few
-- fields per attribute.  Anyone may write Redis, though: the reader
-- reads at most ATTR_FIELDS fields of one description at all levels
-- together, skips nested values (arrays, kvlists, bytes) by their length
-- without walking them, and copies or converts a value once, at the end
-- of its KeyValue, however often the value came: its cost is bounded
-- whatever the bytes.
local ATTR_FIELDS = 2048
local attr_left = 0

-- the selectable text of an AnyValue, or nil (the last value set wins,
-- as protobuf reads a oneof)
local function any_value_text(pb, i, n)
    local kind, va, vb = nil, nil, nil
    while i <= n and attr_left > 0 do
        attr_left = attr_left - 1
        local field, wire, a, b, past = next_field(pb, i, n)
        if not field then
            break
        end
        if (field == 1 and wire == 2) or (field == 2 or field == 3)
                                         and wire == 0 then
            kind, va, vb = field, a, b
        elseif field >= 4 and field <= 7 then
            kind = nil
        end
        i = past
    end
    if kind == 1 then
        return string.sub(pb, va, vb)
    elseif kind == 2 then
        -- any bit set in the varint's groups
        for j = va, vb do
            if string.byte(pb, j) % 128 ~= 0 then
                return 'true'
            end
        end
        return 'false'
    elseif kind == 3 then
        return int64_text(varint_groups(pb, va, vb))
    end
    return nil
end

-- one KeyValue into t, if its key is wanted (want nil: every key)
local function key_value(pb, i, n, t, want)
    local ka, kb, va, vb = nil, nil, nil, nil
    while i <= n and attr_left > 0 do
        attr_left = attr_left - 1
        local field, wire, a, b, past = next_field(pb, i, n)
        if not field then
            return
        end
        if field == 1 and wire == 2 then
            ka, kb = a, b
        elseif field == 2 and wire == 2 then
            va, vb = a, b
        end
        i = past
    end
    -- a key of a length no selector names is not even copied
    if want and not (ka and want[kb - ka + 1]) then
        return
    end
    local key = ka and string.sub(pb, ka, kb) or ''
    if want and not want[key] then
        return
    end
    local value = va and any_value_text(pb, va, vb)
    if value then
        t[key] = value
    end
end

-- the attributes of pb, and how many fields were read for them; with
-- want (a set of keys, and of their lengths as numbers), only those: a
-- value is converted only when a selector can ask for it
local function attributes_of(pb, want)
    local t = {}
    if not pb or pb == '' then
        return t, 0
    end
    local n, i, ident = #pb, 1, {}
    attr_left = ATTR_FIELDS
    -- identifying ones (1) win over non-identifying ones (2)
    while i <= n and attr_left > 0 do
        attr_left = attr_left - 1
        local field, wire, a, b, past = next_field(pb, i, n)
        if not field then
            break
        end
        if wire == 2 and (field == 1 or field == 2) then
            key_value(pb, a, b, field == 1 and ident or t, want)
        end
        i = past
    end
    for k, v in pairs(ident) do
        t[k] = v
    end
    return t, ATTR_FIELDS - attr_left
end
