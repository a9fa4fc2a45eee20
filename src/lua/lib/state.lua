-- lib/state.lua, included first by the scripts that use lib/short_way.lua,
-- lib/owed_config.lua or lib/owed.lua (report.lua, check.lua, beats.lua):
-- what those functions read of the call that runs them.  Each script sets
-- them from its own KEYS and ARGV before it calls any of them (the header
-- of each file of lib/ says which it reads); they are upvalues, not
-- arguments, so that a function does not pass them on to the next.
--
-- prefix       the key prefix
-- now_text     now, Unix ms, as the worker sent it (the text stored)
-- now          the same as a number
-- version_key  <prefix>config_version
-- groups_key   <prefix>groups
-- timeout      opamp_agent_timeout, ms, a number
-- cs_offer     hash of the module's own part of the connection settings
--              offer (the OpAMP heartbeat interval), hex
local prefix, now_text, now, version_key, groups_key, timeout, cs_offer

-- the agent the functions look at: one per call, or each agent of a check
-- batch in turn: its uid, its hash of small fields (key), its own config
-- (acfg; nil: made from prefix and uid when first needed) and its status
-- fields as the agent reported them (skey).  A script that moves on to
-- another agent sets all four and status_t (lib/owed_config.lua) to nil.
local key, acfg, skey, uid

-- an offer is out and not yet acknowledged: the earliest time (Unix ms,
-- a number) one is owed again, else false (set by owed_config(),
-- owed_settings() and owed_packages())
local pending = false

-- per-agent tokens (docs/security.md): the SHA-256 (hex) of the token
-- this call may give the agent (report.lua's ARGV[41]; nil in check.lua,
-- which has none to give); whether the agent holds one, or one is on its
-- way (token_ms); whether owed_settings() offered an opamp part; whether
-- the agent just took its next token
local mint, token_agent, offer_opamp, token_moved
