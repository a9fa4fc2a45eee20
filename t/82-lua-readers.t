#!/usr/bin/perl

# The protobuf readers the Redis scripts share (src/lua/lib/protobuf.lua,
# attributes.lua, status.lua), run in a real redis-server as the scripts
# run them: the attributes selectors see, checked against descriptions
# that protoc encodes; the status string read back as the test's own
# writer made it; and thousands of malformed inputs (random bytes, and a
# real description with bytes changed and cut), none of which may raise
# a Lua error: anyone may write Redis, and a script that fails takes the
# agent's message with it.

use strict;
use warnings;
use lib 't/lib';
use OpAMPTest;
use Test::More;
use Time::HiRes qw(time);

my $t = OpAMPTest->new;
$t->start_redis;

# the libraries in the order the scripts include them
my $LIB = join '', map {
    open my $f, '<', OpAMPTest::root() . "/src/lua/lib/$_.lua" or die "$_: $!\n";
    local $/;
    <$f>;
} qw(protobuf attributes status components);

sub run_lua {
    my ($body, @args) = @_;
    return $t->redis('EVAL', "$LIB\n$body", 0, @args);
}

sub attributes {
    my ($desc) = @_;
    my $r = run_lua('local t = attributes_of(ARGV[1]) local o = {} '
                    . 'for k, v in pairs(t) do o[#o + 1] = k o[#o + 1] = v end '
                    . 'return o', $desc);
    return { @$r };
}

sub kv {
    my ($list, $k, $v) = @_;
    return "$list { key: \"$k\" value { $v } }";
}

# --- the attributes selectors see ---------------------------------------

my $desc = $t->encode('AgentDescription', join ' ',
    kv('identifying_attributes', 'service.name', 'string_value: "checkout"'),
    kv('identifying_attributes', 'env', 'string_value: "prod"'),
    kv('non_identifying_attributes', 'env', 'string_value: "staging"'),
    kv('non_identifying_attributes', 'canary', 'bool_value: true'),
    kv('non_identifying_attributes', 'off', 'bool_value: false'),
    kv('non_identifying_attributes', 'replicas', 'int_value: 42'),
    kv('non_identifying_attributes', 'offset', 'int_value: -5'),
    kv('non_identifying_attributes', 'big', 'int_value: 9007199254740993'),
    kv('non_identifying_attributes', 'max', 'int_value: 9223372036854775807'),
    kv('non_identifying_attributes', 'min', 'int_value: -9223372036854775808'),
    kv('non_identifying_attributes', 'm53', 'int_value: -9007199254740992'),
    kv('non_identifying_attributes', 'm53b', 'int_value: -9007199254740993'),
    kv('non_identifying_attributes', 'p49', 'int_value: 562949953421311'),
    kv('non_identifying_attributes', 'p49b', 'int_value: 562949953421312'),
    kv('non_identifying_attributes', 'ratio', 'double_value: 0.5'),
    kv('non_identifying_attributes', 'raw', 'bytes_value: "\\001"'),
    kv('non_identifying_attributes', 'list',
       'array_value { values { string_value: "a" } }'),
    kv('non_identifying_attributes', 'utf8', 'string_value: "grüße"'));

is_deeply(attributes($desc), {
    'service.name' => 'checkout', env => 'prod', canary => 'true',
    off => 'false', replicas => '42', offset => '-5',
    big => '9007199254740993', max => '9223372036854775807',
    min => '-9223372036854775808', utf8 => "gr\xc3\xbc\xc3\x9fe",
    m53 => '-9007199254740992', m53b => '-9007199254740993',
    p49 => '562949953421311', p49b => '562949953421312',
}, 'attributes: strings as they are, booleans, integers exact to 64 bits '
   . '(either side of the short ways: 2^49, -2^53), '
   . 'an identifying one winning; doubles, bytes and arrays left out');

is_deeply(attributes(''), {}, 'an empty description: no attributes');

my $r0 = run_lua('local want = { env = true, [3] = true, offset = true, '
                 . '[6] = true } local t = attributes_of(ARGV[1], want) '
                 . 'local o = {} for k, v in pairs(t) do o[#o + 1] = k '
                 . 'o[#o + 1] = v end return o', $desc);
is_deeply({ @$r0 }, { env => 'prod', offset => '-5' },
          'attributes_of with the keys selectors name: only those, an '
          . 'identifying one still winning');

# --- the status string ----------------------------------------------------

sub varint {
    my ($v) = @_;
    my $out = '';
    while ($v >= 128) {
        $out .= chr(($v & 127) | 128);
        $v >>= 7;
    }
    return $out . chr($v);
}

sub field { my ($n, $b) = @_; varint($n * 8 + 2) . varint(length $b) . $b }

my $health = "\0" . ('z' x 300);
my $status = field(3, $desc) . field(5, $health) . field(7, '')
             . field(15, 'x' x 200);
my $r = run_lua('local t = status_read(ARGV[1]) local o = {} '
                . 'for k, v in pairs(t) do o[#o + 1] = k o[#o + 1] = v end '
                . 'return o', $status);
is_deeply({ @$r }, { description => $desc, health => $health,
                     remote_config_status => '',
                     connection_settings_status => 'x' x 200 },
          'status_read: every field by name, an empty one too');
is(run_lua('return status_string(status_read(ARGV[1]))', $status), $status,
   'status_string writes back the same bytes');
is(run_lua('return status_description(ARGV[1])', $status), $desc,
   'status_description: the first field alone');
is(run_lua('return status_description(ARGV[1]) or "none"',
           field(5, $health)), 'none',
   'status_description: none when the string holds no description');
is(run_lua('return status_string(status_read(ARGV[1]))',
           field(3, 'a') . field(99, 'b') . "\x1a\xff"), field(3, 'a'),
   'an unknown field and a truncated one are left out, what came before '
   . 'is kept');

# --- a fuzz: malformed and hostile input, each call timed ------------------

# Every reader, on random bytes, on real descriptions and status strings
# with bytes changed and cut, and on structured hostile input up to 1 MB
# (a field repeated up to 450,000 times at any level, as the issue's
# description repeats int_value; nested fields; every wire type), in
# batches of one EVAL each; each reader call is timed inside Redis
# (TIME, in µs) and none may take more than the budget of
# docs/operations.md ("Redis time") three times in a row, nor raise a
# Lua error.  Bounded in
# count (20,000 inputs) and in wall time (60 s).

my $BUDGET_US = 50_000;
my $FUZZ = <<'LUA';
math.randomseed(tonumber(ARGV[3]))
local n, bad, first, slowest, slow_input = tonumber(ARGV[4]), 0, '', 0, ''

local function now_us()
    local t = redis.call('TIME')
    return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

local function vint(v)
    local out = {}
    while v >= 128 do
        out[#out + 1] = string.char(v % 128 + 128)
        v = math.floor(v / 128)
    end
    out[#out + 1] = string.char(v)
    return table.concat(out)
end

-- a random field: any number that the readers look at (1 to 15) or not,
-- any wire type, nested up to depth levels
local function field(depth)
    local number = math.random(1, 16)
    local wire = ({ 0, 0, 1, 2, 2, 2, 5, 3 })[math.random(1, 8)]
    local tag = vint(number * 8 + wire)
    if wire == 0 then
        return tag .. vint(math.random(0, 2 ^ 30))
               .. (math.random(1, 4) == 1 and string.rep('\255', 9) .. '\1'
                   or '')
    elseif wire == 1 then
        return tag .. string.rep('\1', 8)
    elseif wire == 5 then
        return tag .. '\1\2\3\4'
    elseif wire == 2 then
        local body
        if depth > 0 and math.random(1, 2) == 1 then
            local parts = {}
            for k = 1, math.random(1, 4) do
                parts[k] = field(depth - 1)
            end
            body = table.concat(parts)
        else
            body = string.rep('x', math.random(0, 20))
        end
        return tag .. vint(#body) .. body
    end
    return tag
end

-- hostile: one random field repeated up to 450,000 times (within 1 MB),
-- maybe inside the layers a description has (KeyValue, AnyValue)
local function hostile()
    local f = field(math.random(0, 3))
    local times = math.min(math.random(1, 450000),
                           math.floor(1000000 / math.max(#f, 1)))
    local s = string.rep(f, times)
    for _ = 1, math.random(0, 3) do
        s = vint(({ 10, 18, 26 })[math.random(1, 3)]) .. vint(#s) .. s
    end
    return s
end

local function mutate(s)
    for _ = 1, math.random(1, 6) do
        local p = math.random(1, #s)
        s = string.sub(s, 1, p - 1) .. string.char(math.random(0, 255))
            .. string.sub(s, p + 1, math.random(p, #s + 5))
    end
    return s
end

local readers = {
    function(s) attributes_of(s) end,
    function(s) status_string(status_read(s)) end,
    function(s) status_description(s) end,
    function(s) components_of(s) end,
}

-- each reader on s, timed; a call over the budget is timed again, up to
-- three times, so that only a reader that is slow every time counts (the
-- machine may pause any single call)
local function try(s)
    for _, reader in ipairs(readers) do
        local took
        for _ = 1, 3 do
            local t0 = now_us()
            local ok, err = pcall(reader, s)
            took = math.min(took or math.huge, now_us() - t0)
            if not ok then
                bad = bad + 1
                if first == '' then
                    first = tostring(err)
                end
            end
            if took < tonumber(ARGV[6]) then
                break
            end
        end
        if took > slowest then
            slowest, slow_input = took, string.sub(s, 1, 64)
        end
    end
end

if ARGV[5] ~= '' then
    try(ARGV[5])   -- the issue's description, 900 KB
end
for it = 1, n do
    local s
    local kind = it % 8
    if kind == 0 then
        s = hostile()
    elseif kind < 3 then
        local t = {}
        for k = 1, math.random(0, 80) do
            t[k] = string.char(math.random(0, 255))
        end
        s = table.concat(t)
    elseif kind < 6 then
        s = mutate(math.random(1, 2) == 1 and ARGV[1] or ARGV[2])
    else
        local parts = {}
        for k = 1, math.random(1, 30) do
            parts[k] = field(math.random(0, 6))
        end
        s = table.concat(parts)
    end
    try(s)
end
return { bad, first, slowest, slow_input }
LUA

sub field_repeated {
    my ($n, $b) = @_;
    return varint($n * 8 + 2) . varint(length $b) . $b;
}

# the issue's description: one attribute whose value repeats int_value
# 450,000 times
my $issue = field_repeated(2, field_repeated(1, 'k')
                              . field_repeated(2, "\x18\x05" x 450000));

my ($inputs, $errors, $first, $slowest, $slow_input) = (0, 0, '', 0, '');
my $t_end = time + 60;
my $seed = 1;
while ($inputs < 20000 && time < $t_end) {
    my $r = run_lua($FUZZ, $desc, $status, $seed, 200,
                    $seed == 1 ? $issue : '', $BUDGET_US);
    $inputs += $seed++ == 1 ? 201 : 200;
    $errors += $r->[0];
    $first ||= $r->[1];
    if ($r->[2] > $slowest) {
        ($slowest, $slow_input) = ($r->[2], $r->[3]);
    }
}
diag("fuzz: $inputs inputs, slowest reader call $slowest µs");
cmp_ok($inputs, '>=', 2000, "the fuzz ran $inputs inputs within its time");
is($errors, 0, "$inputs malformed and hostile inputs, four readers each: no "
   . 'Lua error') or diag($first);
cmp_ok($slowest, '<', $BUDGET_US, "and no reader call took $BUDGET_US µs or "
       . "more (slowest: $slowest µs)")
    or diag('input starting ' . unpack('H*', $slow_input));

$t->done;
done_testing;
