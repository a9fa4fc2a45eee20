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

my $t = OpAMPTest->new;
$t->start_redis;

# the libraries in the order the scripts include them
my $LIB = join '', map {
    open my $f, '<', OpAMPTest::root() . "/src/lua/lib/$_.lua" or die "$_: $!\n";
    local $/;
    <$f>;
} qw(protobuf attributes status);

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
}, 'attributes: strings as they are, booleans, integers exact to 64 bits, '
   . 'an identifying one winning; doubles, bytes and arrays left out');

is_deeply(attributes(''), {}, 'an empty description: no attributes');

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

# --- malformed input never raises a Lua error ------------------------------

my $errors = run_lua(<<'LUA', $desc, $status, 20000);
local n, bad, first = tonumber(ARGV[3]), 0, ''
for it = 1, n do
    local s
    if it % 3 == 0 then
        local t = {}
        for k = 1, math.random(0, 80) do
            t[k] = string.char(math.random(0, 255))
        end
        s = table.concat(t)
    else
        s = (it % 3 == 1) and ARGV[1] or ARGV[2]
        for k = 1, math.random(1, 6) do
            local p = math.random(1, #s)
            s = string.sub(s, 1, p - 1) .. string.char(math.random(0, 255))
                .. string.sub(s, p + 1, math.random(p, #s + 5))
        end
    end
    local ok, err = pcall(function()
        attributes_of(s)
        status_string(status_read(s))
        status_description(s)
    end)
    if not ok then
        bad = bad + 1
        if first == '' then
            first = tostring(err)
        end
    end
end
return { bad, first }
LUA
is($errors->[0], 0, '20,000 malformed descriptions and status strings: no '
   . 'Lua error') or diag($errors->[1]);

$t->done;
done_testing;
