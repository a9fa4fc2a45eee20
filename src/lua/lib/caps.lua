-- lib/caps.lua, included by report.lua and check.lua: an agent's
-- AgentCapabilities, as the decimal text the scripts get them in.  Its
-- bit() hides Redis's bit library from the code that follows.

-- whether capability bit b (a power of two) is set; the text of the
-- capabilities is parsed once per agent, not once per bit
local caps_text, caps_n = nil, 0

local function caps_number(caps)
    if caps ~= caps_text then
        caps_text, caps_n = caps, tonumber(caps or '0') or 0
    end
    return caps_n
end

local function bit(caps, b)
    return math.floor(caps_number(caps) / b) % 2 == 1
end
