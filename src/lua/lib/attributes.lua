-- lib/attributes.lua, included after lib/protobuf.lua by the scripts
-- that match selectors: the attributes of an AgentDescription (protobuf,
-- as the agent sent it) as a table of key -> string, the way selectors
-- see them: identifying and
-- non-identifying attributes alike (an identifying one wins over a
-- non-identifying one of the same key), strings as they are, booleans as
-- "true"/"false", integers in decimal; other kinds of values are not
-- selectable.  The worker checked the message's wire format before it
-- was stored, but anyone may write Redis: this reader stops at anything
-- it does not expect, keeping what it read so far.

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
    local l = { 0 }
    -- bit 63 is the low bit of the tenth group; higher bits are dropped
    local top = #g
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

-- the selectable text of an AnyValue, or nil (the last value set wins,
-- as protobuf reads a oneof)
local function any_value_text(pb, i, n)
    local text = nil
    while i <= n do
        local field, wire, a, b, past = next_field(pb, i, n)
        if not field then
            return text
        end
        if field == 1 and wire == 2 then
            text = string.sub(pb, a, b)
        elseif field == 2 and wire == 0 then
            -- any bit set in the varint's groups
            local any = false
            for j = a, b do
                any = any or string.byte(pb, j) % 128 ~= 0
            end
            text = any and 'true' or 'false'
        elseif field == 3 and wire == 0 then
            text = int64_text(varint_groups(pb, a, b))
        elseif field >= 4 and field <= 7 then
            text = nil
        end
        i = past
    end
    return text
end

-- one KeyValue into t
local function key_value(pb, i, n, t)
    local key, value = '', nil
    while i <= n do
        local field, wire, a, b, past = next_field(pb, i, n)
        if not field then
            return
        end
        if field == 1 and wire == 2 then
            key = string.sub(pb, a, b)
        elseif field == 2 and wire == 2 then
            value = any_value_text(pb, a, b)
        end
        i = past
    end
    if value then
        t[key] = value
    end
end

local function attributes_of(pb)
    local t = {}
    if not pb or pb == '' then
        return t
    end
    local n = #pb
    -- non-identifying (2) first, so that identifying ones (1) win
    for _, want in ipairs({ 2, 1 }) do
        local i = 1
        while i <= n do
            local field, wire, a, b, past = next_field(pb, i, n)
            if not field then
                break
            end
            if field == want and wire == 2 then
                key_value(pb, a, b, t)
            end
            i = past
        end
    end
    return t
end
