#!/usr/bin/perl

# A fleet change decided by each worker (src/ngx_http_opamp_fanout.c): the
# worker matches the agents it holds against the groups itself, from the
# attributes of the descriptions they sent, with the rules of
# docs/redis-schema.md ("Attributes"), sends the owed configs, and writes
# what it decided in bulk; Redis runs no per-agent check (check.lua) for
# it, which Redis's own SLOWLOG shows.  Changes the worker cannot vouch
# for still reach every agent through check.lua: a config written
# directly with only an INCR of config_version, and a fleet message that
# comes without any increment (custom messages queued by a control
# plane).  What each agent receives is decoded with protoc.

use strict;
use warnings;

use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";

use OpAMPTest;
use OpAMPFleet;

my $P = 'opamp:';

my $t = OpAMPTest->new;
$t->start_redis;
$t->redis('CONFIG', 'SET', 'slowlog-max-len', 100000);
$t->start_nginx('
        location /admin/ { opamp_admin; }', workers => 2);

sub kv {
    my ($k, $v) = @_;
    return "{ key: \"$k\" value { $v } }";
}

# what each agent describes; the attributes as a selector sees them are in
# the comments
my %desc = (
    # service.name=a: the identifying attribute wins over the other kind
    a1 => 'identifying_attributes ' . kv('service.name', 'string_value: "a"')
          . ' non_identifying_attributes '
          . kv('service.name', 'string_value: "b"'),
    # env=dev: of two of the same kind, the last
    a2 => 'identifying_attributes ' . kv('service.name', 'string_value: "x"')
          . ' non_identifying_attributes '
          . kv('env', 'string_value: "prod"')
          . ' non_identifying_attributes '
          . kv('env', 'string_value: "dev"'),
    # flag=true, num=-5, big=9223372036854775807
    a3 => 'identifying_attributes ' . kv('flag', 'bool_value: true')
          . ' identifying_attributes ' . kv('num', 'int_value: -5')
          . ' identifying_attributes '
          . kv('big', 'int_value: 9223372036854775807'),
    # a double is not selectable
    a4 => 'identifying_attributes ' . kv('ratio', 'double_value: 1.5')
          . ' identifying_attributes '
          . kv('service.name', 'string_value: "zz"'),
    # takes no remote config (ReportsStatus only)
    a5 => 'identifying_attributes ' . kv('service.name', 'string_value: "a"'),
);

# a group made while no agent is connected: the workers have nothing to
# decide then, and the first change after the agents came is theirs to
# decide all the same
{
    my ($st) = $t->http_post('{"selector":"service.name=nobody",'
                             . '"files":{"c.yaml":{"body":"g0"}}}',
                             -method => 'PUT',
                             -path => '/admin/configs/groups/g0',
                             'Content-Type' => 'application/json');
    is($st, 200, 'a group before any agent');
}

my %agents;
for my $name (sort keys %desc) {
    my $caps = $name eq 'a5' ? 1 : 3;
    my $ag = OpAMPFleet->connect_ws(port => $t->port);
    $ag->{uid} = OpAMPFleet::random_uid();
    $ag->{seq} = 0;
    $ag->{caps} = $caps;
    $ag->send_msg(OpAMPFleet::with_uid(OpAMPFleet::template(
        "sequence_num: 0 capabilities: $caps agent_description { "
        . $desc{$name} . ' } custom_capabilities { capabilities: '
        . '"io.example.barrier" }'), $ag->{uid}));
    ok(defined $ag->recv_msg(5), "$name is answered");
    $agents{$name} = $ag;
}

sub key_of { 'agent:{' . OpAMPFleet::uid_text($agents{$_[0]}{uid}) . '}' }

sub field { $t->redis('HGET', $P . key_of($_[0]), $_[1]) // '' }

# a heartbeat: a5 settles (it is owed nothing)
for my $name (sort keys %agents) {
    my $ag = $agents{$name};
    $ag->{seq}++;
    $ag->send_msg(OpAMPFleet::encode('AgentToServer',
        'instance_uid: "' . OpAMPFleet::uid_escape($ag->{uid})
        . "\" sequence_num: $ag->{seq} capabilities: $ag->{caps}"));
    $ag->recv_msg(5);
}
like(field('a5', 'settled'), qr/^\d+ /, 'a5 is settled');

sub hash_of {
    return OpAMPFleet::config_hash('c.yaml' => [ $_[0], '' ]);
}

sub put {
    my ($path, $json) = @_;
    my ($st) = $t->http_post($json, -method => 'PUT',
                             -path => "/admin/configs/$path",
                             'Content-Type' => 'application/json');
    return $st;
}

# the config hashes each agent received for the change just made, proven
# by a barrier (OpAMPFleet::barrier_received)
my $barrier = 0;

sub received {
    return OpAMPFleet::barrier_received($t, $P, \%agents, ++$barrier);
}

# the per-agent config checks (check.lua: EVALSHA with config_version and
# groups as its two keys) Redis ran since the last look
sub checks {
    my $log = $t->redis('SLOWLOG', 'GET', 100000);
    $t->redis('SLOWLOG', 'RESET');
    return scalar grep {
        my $a = $_->[3];
        ($a->[0] // '') eq 'EVALSHA' && ($a->[2] // '') eq '2'
            && ($a->[3] // '') eq "${P}config_version"
            && ($a->[4] // '') eq "${P}groups"
    } @$log;
}

# a change, decided by the workers: the agents owed a config get it, the
# others nothing, and no agent was checked by Redis
sub change {
    my ($what, $path, $json, $want) = @_;
    $t->redis('CONFIG', 'SET', 'slowlog-log-slower-than', 0);
    $t->redis('SLOWLOG', 'RESET');
    is(put($path, $json), 200, "$what: PUT $path");
    # what the workers wrote in bulk is there before the barrier goes
    my $version = $t->redis('GET', "${P}config_version");
    ok($t->wait_for(sub {
        !grep { field($_, 'config_version') ne $version }
            grep { $_ ne 'a5' } keys %agents }, 10),
       "$what: every agent's decision is written at version $version");
    is(checks(), 0, "$what: Redis checked no agent");
    $t->redis('CONFIG', 'SET', 'slowlog-log-slower-than', 10000);
    is_deeply(received(), $want, "$what: what each agent receives");
}

my %none = map { ($_ => '') } keys %agents;

change('a new group', 'groups/g1',
       '{"selector":"service.name=a","files":{"c.yaml":{"body":"g1 v1"}}}',
       { %none, a1 => hash_of('g1 v1') });
is(field('a1', 'desired_config'), 'group:g1', 'a1 desires g1');
is(field('a1', 'offered_hash'), hash_of('g1 v1'), 'and was offered it');
is(field('a4', 'desired_config'), '', 'a4 desires nothing');
my $version = $t->redis('GET', "${P}config_version");
like(field('a5', 'settled'), qr/^$version /,
     'a5, owed nothing whatever configs do, stays settled at the new '
     . 'version');

change('the last of two attributes of a kind', 'groups/g2',
       '{"selector":"env=dev","priority":5,'
       . '"files":{"c.yaml":{"body":"g2 v1"}}}',
       { %none, a2 => hash_of('g2 v1') });

change('booleans and integers as text', 'groups/g3',
       '{"selector":"flag=true,num=-5,big=9223372036854775807",'
       . '"files":{"c.yaml":{"body":"g3 v1"}}}',
       { %none, a3 => hash_of('g3 v1') });

change('a double, and the losing kind of attribute, match nothing',
       'groups/g4',
       '{"selector":"ratio=1.5","files":{"c.yaml":{"body":"g4 v1"}}}',
       \%none);
change('the non-identifying service.name of a1', 'groups/g5',
       '{"selector":"service.name=b","priority":9,'
       . '"files":{"c.yaml":{"body":"g5 v1"}}}',
       \%none);

change('new files for a group', 'groups/g1',
       '{"selector":"service.name=a","files":{"c.yaml":{"body":"g1 v2"}}}',
       { %none, a1 => hash_of('g1 v2') });
is(field('a1', 'desired_hash'), hash_of('g1 v2'), 'a1 desires the new hash');

# --- what the workers cannot vouch for goes to Redis ------------------------

# a control plane writes a group and increments config_version, without
# the admin API's note of what changed (docs/redis-schema.md, "Writing a
# config directly")
$t->redis('CONFIG', 'SET', 'slowlog-log-slower-than', 0);
$t->redis('SLOWLOG', 'RESET');
my $h3 = hash_of('g1 v3');
$t->redis('HSET', "${P}config:group:g1", 'hash', $h3, 'file:c.yaml',
          'g1 v3');
$t->redis('INCR', "${P}config_version");
$t->redis('PUBLISH', "${P}fleet", 'config');
my $m = $agents{a1}->recv_msg(10);
like(defined $m ? OpAMPFleet::decode('ServerToAgent', $m) : '',
     qr/config_hash: "/, 'a direct write: a1 receives the config');
is(field('a1', 'offered_hash'), $h3, 'the new one');
cmp_ok(checks(), '>=', 1, 'Redis checked the agents');
$t->redis('CONFIG', 'SET', 'slowlog-log-slower-than', 10000);

# the same without telling the fleet; the next change the admin API makes
# (another group's files: a change that moves no agent between configs)
# tells it, and the workers know that a change before it has no note
my $h4 = hash_of('g1 v4');
$t->redis('HSET', "${P}config:group:g1", 'hash', $h4, 'file:c.yaml',
          'g1 v4');
$t->redis('INCR', "${P}config_version");
is(put('groups/g2', '{"selector":"env=dev","priority":5,'
                    . '"files":{"c.yaml":{"body":"g2 v2"}}}'), 200,
   'PUT groups/g2');
$m = $agents{a1}->recv_msg(10);
like(defined $m ? OpAMPFleet::decode('ServerToAgent', $m) : '',
     qr/config_hash: "/, 'a direct write, then a change of the admin API: '
     . 'a1 receives the direct write\'s config');
is(field('a1', 'offered_hash'), $h4, 'the new one');

# custom messages queued for an agent and the fleet told, nothing else
$t->redis('RPUSH', $P . 'outbox:{' . OpAMPFleet::uid_text($agents{a2}{uid})
          . '}', "io.example.barrier\nnote\nhello");
$t->redis('PUBLISH', "${P}fleet", 'config');
# (a2 has g2's new files before it)
my $text = '';
for (1 .. 3) {
    $m = $agents{a2}->recv_msg(10);
    $text = defined $m ? OpAMPFleet::decode('ServerToAgent', $m) : '';
    last if $text =~ /custom_message/;
}
like($text, qr/data: "hello"/, 'a message without a change of '
     . 'config_version: the custom message reaches the agent at once');

$_->close for values %agents;
$t->done;
done_testing;
