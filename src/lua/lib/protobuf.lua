-- lib/protobuf.lua, included by the scripts that read protobuf: a short
-- reader of the wire format (varints, tags, length-delimited fields) and
-- the writer of a length-delimited field.  Anyone may write Redis: the
-- readers return nil at anything malformed, never read past the end, and
-- take tags and lengths of at most 5 bytes (as protobuf-c).

-- a varint at i: its bytes as numbers (least significant group first),
-- and the index past it; nil past the end
local function varint_groups(pb, i, n)
    local g = {}
    while i <= n and #g < 10 do
        local b = string.byte(pb, i)
        i = i + 1
        if b < 128 then
            g[#g + 1] = b
            return g, i
        end
        g[#g + 1] = b - 128
    end
    return nil, i
end

-- a varint of at most 5 bytes (tags and lengths) as a number
local function small_varint(pb, i, n)
    local g, j = varint_groups(pb, i, n)
    if not g or #g > 5 then
        return nil, j
    end
    local v, mul = 0, 1
    for _, b in ipairs(g) do
        v, mul = v + b * mul, mul * 128
    end
    return v, j
end

-- the next field at i: its number, wire type, and for a length-delimited
-- one the bounds of its bytes, for a varint its groups; the index past
-- it; nil for anything malformed or of a wire type protobuf no longer uses
local function next_field(pb, i, n)
    local tag
    tag, i = small_varint(pb, i, n)
    if not tag then
        return nil
    end
    local field, wire = math.floor(tag / 8), tag % 8
    if wire == 0 then
        local g
        g, i = varint_groups(pb, i, n)
        if not g then
            return nil
        end
        return field, wire, g, nil, i
    elseif wire == 2 then
        local len
        len, i = small_varint(pb, i, n)
        if not len or i + len - 1 > n then
            return nil
        end
        return field, wire, i, i + len - 1, i + len
    elseif wire == 1 or wire == 5 then
        local past = i + (wire == 1 and 8 or 4)
        if past - 1 > n then
            return nil
        end
        return field, wire, nil, nil, past
    end
    return nil
end

-- a number (at most 2^53) as a varint
local function varint(v)
    local out = {}
    while v >= 128 do
        out[#out + 1] = string.char(v % 128 + 128)
        v = math.floor(v / 128)
    end
    out[#out + 1] = string.char(v)
    return table.concat(out)
end

-- field number f, length-delimited, with bytes b
local function len_field(f, b)
    return varint(f * 8 + 2) .. varint(#b) .. b
end
