-- lib/protobuf.lua, included by the scripts that read protobuf: a short
-- reader of the wire format (varints, tags, length-delimited fields) and
-- the writer of a length-delimited field.  Anyone may write Redis: the
-- readers return nil at anything malformed, never read past the end, and
-- take tags and lengths of at most 5 bytes (as protobuf-c).

-- a varint of at most 5 bytes at i (tags and lengths) as a number, and
-- the index past it; nil for a longer one or one past the end.  No table
-- is made: the scripts read many of these per message.
local function small_varint(pb, i, n)
    local v, mul = 0, 1
    for j = i, i + 4 do
        if j > n then
            return nil, j
        end
        local b = string.byte(pb, j)
        if b < 128 then
            return v + b * mul, j + 1
        end
        v, mul = v + (b - 128) * mul, mul * 128
    end
    return nil, i + 5
end

-- the groups of the varint in pb[a..b] (7 bits each, least significant
-- first), for the values that need all 64 bits
local function varint_groups(pb, a, b)
    local g = {}
    for j = a, b do
        g[#g + 1] = string.byte(pb, j) % 128
    end
    return g
end

-- the next field at i: its number, wire type, the bounds of its bytes (a
-- length-delimited one's content, a varint's own bytes; nil for fixed
-- ones) and the index past it; nil for anything malformed or of a wire
-- type protobuf no longer uses
local function next_field(pb, i, n)
    local tag
    tag, i = small_varint(pb, i, n)
    if not tag then
        return nil
    end
    local field, wire = math.floor(tag / 8), tag % 8
    if wire == 0 then
        -- at most 10 bytes, the last without its high bit
        for j = i, math.min(i + 9, n) do
            if string.byte(pb, j) < 128 then
                return field, wire, i, j, j + 1
            end
        end
        return nil
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
