#!/usr/bin/perl

# What a worker decided at a fleet change, as offered.lua writes it in
# bulk (src/ngx_http_opamp_fanout_offered.c): the agents of a call share
# kinds of decision, and each agent is written with its own.  Agents
# last resolved at different config_versions have different marks that
# may move: each settled mark moves to the new version when the changes
# since the agent's own version leave it owed nothing.  And an agent
# sent a config by the worker is not settled by it: its heartbeats take
# the long way, so that an offer it never acknowledges is made again
# after opamp_agent_timeout (docs/redis-schema.md, "settled").  One
# worker, so that every agent is in the same calls.

use strict;
use warnings;

use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use Time::HiRes qw(time sleep);

use OpAMPTest;
use OpAMPFleet;

my $P = 'opamp:';
my $TIMEOUT = 5;

$SIG{PIPE} = 'IGNORE';

my $t = OpAMPTest->new;
$t->start_redis;
$t->start_nginx('
        location /admin/ { opamp_admin; }', workers => 1,
    # every heartbeat goes to Redis: the marks this test reads are what
    # beats.lua and check.lua write (t/13 tests the heartbeats a worker
    # answers itself)
    http => "opamp_heartbeat_interval 1s;\n"
            . "    opamp_agent_timeout ${TIMEOUT}s;\n"
            . "    opamp_heartbeat_recheck 0;");

sub put {
    my ($path, $json) = @_;
    my ($st) = $t->http_post($json, -method => 'PUT',
                             -path => "/admin/configs/$path",
                             'Content-Type' => 'application/json');
    return $st;
}

sub connect_agent {
    my ($service) = @_;
    my $ag = OpAMPFleet->connect_ws(port => $t->port);
    $ag->{uid} = OpAMPFleet::random_uid();
    $ag->{seq} = 0;
    $ag->send_msg(OpAMPFleet::with_uid(OpAMPFleet::template(
        'sequence_num: 0 capabilities: 3 agent_description { '
        . 'identifying_attributes { key: "service.name" '
        . "value { string_value: \"$service\" } } }"), $ag->{uid}));
    ok(defined $ag->recv_msg(5), "$service: answered");
    return $ag;
}

# a heartbeat and its answer (decoded, '' for none)
sub beat {
    my ($ag) = @_;
    $ag->{seq}++;
    $ag->send_msg(OpAMPFleet::encode('AgentToServer',
        'instance_uid: "' . OpAMPFleet::uid_escape($ag->{uid})
        . "\" sequence_num: $ag->{seq} capabilities: 3"));
    my $m = $ag->recv_msg(5);
    return defined $m ? OpAMPFleet::decode('ServerToAgent', $m) : '';
}

sub field {
    my ($ag, $f) = @_;
    return $t->redis('HGET', $P . 'agent:{'
                     . OpAMPFleet::uid_text($ag->{uid}) . '}', $f) // '';
}

sub version { $t->redis('GET', "${P}config_version") // 0 }

# the per-agent config checks (check.lua: EVALSHA with config_version and
# groups as its two keys) Redis ran since the last look: none, when the
# worker decides
$t->redis('CONFIG', 'SET', 'slowlog-max-len', 100000);
$t->redis('CONFIG', 'SET', 'slowlog-log-slower-than', 0);

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

# --- marks of two versions in one call ----------------------------------

# y1 first and y2 last among the connections, x between: whichever way
# the worker walks them, an agent of the newer version comes before x
my $y1 = connect_agent('y1');
my $x = connect_agent('x');
my $y2 = connect_agent('y2');
beat($_) for $y1, $x, $y2;
my $a = version();
like(field($_, 'settled'), qr/^$a /, 'settled at the first version')
    for $y1, $x, $y2;

# an agent's own config (of an agent not connected) moves config_version
# and tells no worker; y1 and y2 learn it at their next message
is(put('agents/' . OpAMPTest::uid_text(OpAMPTest::random_uid()),
       '{"files":{"c.yaml":{"body":"own"}}}'), 200, 'an agent\'s config');
my $b = version();
cmp_ok($b, '>', $a, 'config_version moved');
beat($_) for $y1, $y2;
like(field($_, 'settled'), qr/^$b /, 'y1 and y2 settled at the second')
    for $y1, $y2;
like(field($x, 'settled'), qr/^$a /, 'x still at the first');

# a group that matches none of them: owed nothing new, every mark moves
checks();
is(put('groups/nobody', '{"selector":"service.name=nobody",'
       . '"files":{"c.yaml":{"body":"n"}}}'), 200, 'a group for nobody');
my $c = version();
ok($t->wait_for(sub { field($x, 'settled') =~ /^$c / }, 10),
   'x, resolved at the first version, is settled at the new one')
    or diag('x: ' . field($x, 'settled'));
like(field($_, 'settled'), qr/^$c /, 'and so are y1 and y2')
    for $y1, $y2;
is(field($_, 'config_version'), $c, 'each decision at the new version')
    for $y1, $x, $y2;
is(checks(), 0, 'decided by the worker: Redis checked no agent');
$_->close for $y1, $x, $y2;

# --- an offer of the worker: its heartbeats take the long way ------------

my $d = connect_agent('d');
beat($d);
my $e = version();
like(field($d, 'settled'), qr/^$e /, 'd settled');

checks();
is(put('groups/d', '{"selector":"service.name=d",'
       . '"files":{"c.yaml":{"body":"d v1"}}}'), 200, 'a group for d');
my $h = OpAMPFleet::config_hash('c.yaml' => [ 'd v1', '' ]);
my $m = $d->recv_msg(10);
my $sent = time;
like(defined $m ? OpAMPFleet::decode('ServerToAgent', $m) : '',
     qr/config_hash: "/, 'd is sent the config by the worker');
ok($t->wait_for(sub { field($d, 'offered_hash') eq $h }, 10),
   'its offer is written');
is(checks(), 0, 'by the worker: Redis checked no agent');
$t->redis('CONFIG', 'SET', 'slowlog-log-slower-than', 10000);

# d never acknowledges it: a heartbeat a second, until the offer is made
# again (the long way, once opamp_agent_timeout passed since it was made)
my ($again, $early) = (0, 0);
while (time < $sent + 4 * $TIMEOUT) {
    my $r = beat($d);
    if ($r =~ /config_hash: "/) {
        $again = 1;
        $early = 1 if time < $sent + $TIMEOUT - 1;
        last;
    }
    sleep 1;
}
ok($again, 'the offer d did not acknowledge is made again');
ok(!$early, 'not before opamp_agent_timeout');

$d->close;
$t->done;
done_testing;
