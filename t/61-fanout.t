#!/usr/bin/perl

# A group config change reaches every member of a fleet of 1,000 WebSocket
# agents spread over two nginx instances (two workers each) that share one
# Redis, and no agent outside the group.  Also: an HTTP agent of the group
# on the second instance gets it at its next poll.  Members that accept
# connection settings get their offer once, at connect, and not again with
# the config (a worker checks its agents in batches).

use strict;
use warnings;

use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use IO::Select;
use Time::HiRes qw(time);

use OpAMPTest;
use OpAMPFleet;

my $N = 1000;

my $ta = OpAMPTest->new;
$ta->start_redis;
my $tb = OpAMPTest->new(redis_port => $ta->redis_port);

$ta->start_nginx('
        location /admin/ { opamp_admin; }',
    workers => 2, http => 'opamp_server_id host-a;');
$tb->start_nginx('', workers => 2, http => 'opamp_server_id host-b;');

# OpAMP settings for the fleet: an agent that accepts them is offered
# them only with an endpoint (docs/redis-schema.md)
my ($cs_status) = $ta->http_post(
    '{"opamp": {"destination_endpoint": "ws://127.0.0.1:1/v1/opamp"}}',
    -method => 'PUT', -path => '/admin/connection-settings',
    'Content-Type' => 'application/json');

my $member = OpAMPFleet::template(
    'sequence_num: 0 capabilities: 3 agent_description { '
    . 'identifying_attributes { key: "service.name" '
    . 'value { string_value: "edge" } } }');
my $settings_member = OpAMPFleet::template(
    'sequence_num: 0 capabilities: 259 agent_description { '
    . 'identifying_attributes { key: "service.name" '
    . 'value { string_value: "edge" } } }');
my $outsider = OpAMPFleet::template(
    'sequence_num: 0 capabilities: 3 agent_description { '
    . 'identifying_attributes { key: "service.name" '
    . 'value { string_value: "other" } } }');

# connect the fleet: every tenth agent is outside the group, every fifth
# accepts OpAMP connection settings
my (@agents, %by_sock);
for my $i (0 .. $N - 1) {
    my $t = $i % 2 ? $tb : $ta;
    my $ag = OpAMPFleet->connect_ws(port => $t->port);
    $ag->{uid} = OpAMPFleet::random_uid();
    $ag->{member} = $i % 10 != 9;
    $ag->{settings} = $i % 5 == 0;
    $ag->send_msg(OpAMPFleet::with_uid(
        !$ag->{member} ? $outsider
        : $ag->{settings} ? $settings_member : $member, $ag->{uid}));
    push @agents, $ag;
    $by_sock{ fileno $ag->sock } = $ag;
}

# every agent is answered first (nothing owed yet)
my $sel = IO::Select->new(map { $_->sock } @agents);
my $answered = 0;
my $first_offer;
my $deadline = time + 60;
while ($answered < $N && time < $deadline) {
    for my $s ($sel->can_read(1)) {
        my $ag = $by_sock{ fileno $s };
        $ag->feed or next;
        for my $m ($ag->drain) {
            $answered++;
            $first_offer //= $m if $ag->{settings};
        }
    }
}
is($cs_status, 200, 'OpAMP settings stored for the fleet');
is($answered, $N, "all $N agents answered");
like(OpAMPFleet::decode('ServerToAgent', $first_offer // ''),
     qr{^connection_settings \{.*?opamp \{\s*destination_endpoint: "ws://127.0.0.1:1/v1/opamp"\s*heartbeat_interval_seconds: 30}ms,
     'members accepting connection settings are offered them at connect');

my %workers;
for my $t ($ta, $tb) {
    $workers{$_} = 0 for $t->worker_pids;
}
for my $ag (@agents[0 .. 49]) {
    my $w = $ta->redis('HGET', 'opamp:agent:{'
                      . OpAMPFleet::uid_text($ag->{uid}) . '}', 'worker_pid');
    $workers{$w}++ if defined $w;
}
is(scalar(grep { $_ > 0 } values %workers), 4,
   'the agents are spread over the four workers of the two instances');

# what the settings members were offered, as Redis remembers it
my @settings_members = grep { $_->{settings} } @agents;
my $cs_key = 'opamp:agent:{' . OpAMPFleet::uid_text($settings_members[0]{uid})
             . '}';
my $cs_before = $ta->redis('HGET', $cs_key, 'cs_hash') // '';
like($cs_before, qr/^[0-9a-f]{40}$/, 'Redis remembers the settings offered');

# the operator changes the group through the admin API of instance a
my %files = ('edge.yaml' => [ "exporters: {}\n", 'text/yaml' ]);
my $hash = OpAMPFleet::config_hash(%files);
my $t0 = time;
my ($st, $h, $body) = $ta->http_post(
    '{"selector":"service.name=edge","priority":1,"files":{"edge.yaml":'
    . '{"body":"exporters: {}\\n","content_type":"text/yaml"}}}',
    -method => 'PUT', -path => '/admin/configs/groups/edge',
    'Content-Type' => 'application/json');
is($st, 200, 'the group config is set through the admin API');
like($body, qr/"config_hash":"$hash"/, 'with the expected hash');

my $want = grep { $_->{member} } @agents;
my ($got, $wrong, $extra) = (0, 0, 0);
my (@lat, @settings_msgs);
my $needle = "\x12\x20" . pack('H*', $hash);
$deadline = time + 30;
while ($got < $want && time < $deadline) {
    for my $s ($sel->can_read(0.5)) {
        my $ag = $by_sock{ fileno $s };
        $ag->feed or next;
        for my $m ($ag->drain) {
            if (!$ag->{member}) { $extra++; next }
            if (index($m, $needle) >= 0) {
                $got++;
                push @settings_msgs, $m if $ag->{settings};
                push @lat, time - $t0;
            } else {
                $wrong++;
            }
        }
    }
}

# a moment for stray messages to outsiders
for my $s ($sel->can_read(0.5)) {
    my $ag = $by_sock{ fileno $s };
    $ag->feed or next;
    my @m = $ag->drain;
    $extra += @m unless $ag->{member};
}

is($got, $want, "every one of the $want members received the config");
is($wrong, 0, 'no member received anything else');
is($extra, 0, 'no agent outside the group received anything');
ok(@settings_msgs > 50, 'members accepting connection settings among them');
is(scalar(grep { OpAMPFleet::decode('ServerToAgent', $_)
                     =~ /^connection_settings/m } @settings_msgs), 0,
   'no connection settings offered again with the config');
is($ta->redis('HGET', $cs_key, 'cs_hash'), $cs_before,
   'nor marked as owed at the next heartbeat');
@lat = sort { $a <=> $b } @lat;
diag(sprintf('fan-out to %d agents: p50 %.0f ms, max %.0f ms', scalar @lat,
             1000 * ($lat[@lat / 2] // 0), 1000 * ($lat[-1] // 0)));

# one decoded with protoc, to check more than the hash
my $sample = OpAMPFleet->connect_ws(port => $tb->port);
$sample->send_msg(OpAMPFleet::with_uid($member, OpAMPFleet::random_uid()));
my $text = OpAMPFleet::decode('ServerToAgent', $sample->recv_msg(5) // '');
like($text, qr/key: "edge.yaml"\s*value \{\s*body: "exporters: \{\}\\n"\s*content_type: "text\/yaml"/,
     'a new member connecting to the other instance gets it on connect');
$sample->close;

# an HTTP member on instance b gets it in its reply
($st, $h, $body) = $tb->http_post(
    OpAMPFleet::with_uid($member, OpAMPFleet::random_uid()));
ok(index($body, $needle) >= 0, 'an HTTP member gets it in its reply');

$_->close for @agents;

$tb->done;
$ta->done;
done_testing;
