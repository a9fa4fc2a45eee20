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
-- numbers are doubles), two's complement for negatives
local function int64_text(g)
    local top = #g
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

-- the decimal text of the int64 varint pb[a..b].  Values within 2^53
-- either way, which doubles hold exactly, take a short way without a
-- table: most of them, and every negative one of the usual sizes.
local function int_text(pb, a, b)
    local n = b - a + 1
    if n <= 7 then
        local v, mul = 0, 1
        for j = a, b do
            v, mul = v + string.byte(pb, j) % 128 * mul, mul * 128
        end
        return string.format('%.0f', v)
    end
    -- negative, magnitude at most 2^53: bits 53 to 63 all set
    if n == 10 and string.byte(pb, b) % 2 == 1
       and string.byte(pb, a + 8) % 128 == 127
       and math.floor(string.byte(pb, a + 7) % 128 / 16) == 7
    then
        local v, mul = 0, 1
        for j = a, a + 6 do
            v, mul = v + string.byte(pb, j) % 128 * mul, mul * 128
        end
        v = v + string.byte(pb, a + 7) % 16 * mul
        return '-' .. string.format('%.0f', 2 ^ 53 - v)
    end
    return int64_text(varint_groups(pb, a, b))
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
        return int_text(pb, va, vb)
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
            -- the key comes first (protobuf writes fields in order): one
            -- that no selector names ends the reading here, and a key of
            -- a length that none names is not even copied
            if want and not (want[kb - ka + 1]
                             and want[string.sub(pb, ka, kb)])
            then
                return
            end
        elseif field == 2 and wire == 2 then
            va, vb = a, b
        end
        i = past
    end
    if want and not ka then
        return
    end
    local key = ka and string.sub(pb, ka, kb) or ''
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
