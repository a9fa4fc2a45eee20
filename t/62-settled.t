#!/usr/bin/perl

# Heartbeats of an agent that is owed nothing take a short way through
# the report script (only sequence and liveness are written; the agent
# hash marks it "settled").  Whatever a control plane changes afterwards,
# through the admin API or by writing Redis as docs/redis-schema.md says,
# must still reach the agent at its next message.

use strict;
use warnings;

use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";

use OpAMPTest;
use OpAMPFleet;

my $t = OpAMPTest->new;
$t->start_redis;
$t->start_nginx('
        location /admin/ { opamp_admin; }', workers => 1);

my $P = 'opamp:';

# ReportsStatus, AcceptsRemoteConfig, AcceptsRestartCommand
my $CAPS = 0x1 | 0x2 | 0x400;

my $uid = random_uid();
my $text = uid_text($uid);
my $key = "${P}agent:{$text}";
my $seq = 0;

sub poll {
    my (%o) = @_;
    my $caps = $o{caps} // $CAPS;
    my $extra = $o{extra} // '';
    my ($st, $h, $body) = $t->http_post($t->a2s(
        'instance_uid: "' . uid_escape($uid) . '" '
        . 'sequence_num: ' . $seq++ . " capabilities: $caps $extra"));
    is($st, 200, "poll $seq answered") or return '';
    return $t->s2a_text($body);
}

my $desc = 'agent_description { identifying_attributes { '
           . 'key: "service.name" value { string_value: "cart" } } }';

# --- becoming settled --------------------------------------------------------

poll(extra => $desc);
like($t->redis('HGET', $key, 'settled') // '', qr/^0 [0-9a-f]{16}$/,
     'settled after a full report with nothing owed: config_version and '
     . 'a digest of capabilities, settings hash, connection, transport, '
     . 'channel');
is($t->redis('OBJECT', 'ENCODING', $key), 'listpack',
   'a small agent hash stays compact (every value under 64 bytes)');

my $before = $t->agent($uid);
select undef, undef, undef, 0.01;
my $r = poll();
unlike($r, qr/flags|remote_config|command/, 'a heartbeat: nothing owed');
my $after = $t->agent($uid);
is($after->{sequence_num}, 1, 'its sequence_num stored');
ok($after->{last_seen_ms} > $before->{last_seen_ms}, 'last_seen_ms moves');
ok($after->{expires_ms} > $before->{expires_ms}, 'expires_ms moves');
is($after->{settled}, $before->{settled}, 'still settled');

# the short way itself: a settled heartbeat writes sequence_num,
# last_seen_ms and expires_ms only (redis-schema.md, settled), so a field
# that the long way writes on every report keeps what we put there; the
# same heartbeat without the mark takes the long way and rewrites it
my $sid = $after->{server_id};
$t->redis('HSET', $key, server_id => 'marker', worker_pid => '1');
$r = poll();
$after = $t->agent($uid);
is($after->{sequence_num}, 2, 'a settled heartbeat is stored');
is("$after->{server_id} $after->{worker_pid}", 'marker 1',
   'and takes the short way: nothing but sequence and liveness written');
$t->redis('HSET', $key, settled => '');
$r = poll();
$after = $t->agent($uid);
is($after->{server_id}, $sid, 'unsettled, the same heartbeat takes the '
   . 'long way (server_id written again)');
like($after->{settled}, qr/^0 /, 'and settles the agent again');

# a heartbeat out of sequence is not settled: the full state is asked for
$seq++;
$r = poll();
like($r, qr/flags: 1\b/, 'a sequence gap asks for the full state');
is($t->redis('HGET', $key, 'settled'), undef, 'and unsettles the agent');
poll(extra => $desc);
like($t->redis('HGET', $key, 'settled'), qr/^0 /, 'settled again');

# --- a command written directly, as the schema documents -------------------

$t->redis('SET', "${P}command:{$text}", 'restart');
$r = poll();
like($r, qr/^command \{/m, 'a directly written command reaches a settled '
     . 'agent at its next poll');
is($t->redis('EXISTS', "${P}command:{$text}"), 0, 'and is taken');
poll();
like($t->redis('HGET', $key, 'settled'), qr/^0 /, 'settled again');

# --- a command through the admin API ----------------------------------------

my ($st, $h, $body) = $t->http_post('', -path => "/admin/agents/$text/restart");
is($st, 202, 'the admin API queues a restart');
is($t->redis('HGET', $key, 'settled'), '', 'the admin API unsettles it');
$r = poll();
like($r, qr/^command \{/m, 'the admin command arrives at the next poll');

# --- a custom message queued directly, as the schema documents -------------

# (without AcceptsRestartCommand, whose command key is looked at too)
poll(caps => 3,
     extra => 'custom_capabilities { capabilities: "io.example.ping" }');
poll(caps => 3);
like($t->redis('HGET', $key, 'settled') // '', qr/^\d+ [0-9a-f]{16}$/,
     'settled with a custom capability');
$t->redis('RPUSH', "${P}outbox:{$text}", "io.example.ping\ntext/plain\nhello");
$r = poll(caps => 3);
like($r, qr/custom_message \{.*capability: "io.example.ping".*data: "hello"/s,
     'a custom message queued directly reaches a settled agent at its next '
     . 'poll');

# --- a group config written directly, with INCR config_version ------------

poll();
my %files = ('c.yaml' => [ "x: 1\n", 'text/yaml' ]);
my $hash = OpAMPFleet::config_hash(%files);
$t->redis('MULTI');
$t->redis('HSET', "${P}config:group:cart", selector => 'service.name=cart',
          priority => 1, hash => $hash, updated_ms => 1,
          'file:c.yaml' => "x: 1\n", 'type:c.yaml' => 'text/yaml');
$t->redis('ZADD', "${P}groups", 1, 'cart');
$t->redis('INCR', "${P}config_version");
$t->redis('EXEC');
$r = poll();
like($r, qr/remote_config \{.*key: "c.yaml"/s,
     'a group config reaches a settled agent at its next poll');
is($t->redis('HGET', $key, 'settled'), undef,
   'not settled while the config is offered and not acknowledged');
$r = poll();
unlike($r, qr/remote_config/, 'the next heartbeat gets nothing: the offer '
       . 'is out');
like($t->redis('HGET', $key, 'settled') // '', qr/^1 /,
     'settled then, until the offer is due again (t/11)');
$r = poll(extra => 'remote_config_status { last_remote_config_hash: "'
                   . join('', map { sprintf '\\%03o', $_ }
                                  unpack 'C*', pack 'H*', $hash)
                   . '" status: RemoteConfigStatuses_APPLIED }');
like($t->redis('HGET', $key, 'settled'), qr/^1 /,
     'settled once applied, at the new config_version');

# --- new capabilities are not a heartbeat ----------------------------------

# ReportsAvailableComponents and none stored: asked for them
$r = poll(caps => $CAPS | 0x4000);
like($r, qr/flags: 2\b/, 'a capability added in a heartbeat is seen');

# --- an agent that accepts connection settings settles too -----------------

my $uid2 = random_uid();
my $k2 = "${P}agent:{" . uid_text($uid2) . '}';
($st, $h, $body) = $t->http_post($t->a2s(
    'instance_uid: "' . uid_escape($uid2) . '" sequence_num: 0 '
    . 'capabilities: ' . (0x1 | 0x100) . " $desc"));
$t->http_post($t->a2s('instance_uid: "' . uid_escape($uid2) . '" '
                      . 'sequence_num: 1 capabilities: ' . (0x1 | 0x100)));
like($t->redis('HGET', $k2, 'settled') // '', qr/^\d+ [0-9a-f]{16}$/,
     'an agent that accepts connection settings settles once owed nothing');
$t->redis('HSET', $k2, 'server_id', 'marker');
$t->http_post($t->a2s('instance_uid: "' . uid_escape($uid2) . '" '
                      . 'sequence_num: 2 capabilities: ' . (0x1 | 0x100)));
is($t->redis('HGET', $k2, 'server_id'), 'marker',
   'its heartbeat takes the short way');

# fleet connection settings written directly, as docs/redis-schema.md
# says: with INCR config_version
$t->redis('SET', "${P}connection_settings", $t->encode(
    'ConnectionSettingsOffers', 'opamp { destination_endpoint: '
    . '"ws://127.0.0.1:1/v1/opamp" }'));
$t->redis('INCR', "${P}config_version");
($st, $h, $body) = $t->http_post($t->a2s(
    'instance_uid: "' . uid_escape($uid2) . '" sequence_num: 3 '
    . 'capabilities: ' . (0x1 | 0x100)));
like($t->s2a_text($body), qr/destination_endpoint: "ws:\/\/127.0.0.1:1/,
     'fleet connection settings written directly reach it at its next '
     . 'poll');
is($t->redis('HGET', $k2, 'settled'), undef,
   'not settled while the offer is out');
$t->redis('DEL', "${P}connection_settings");
$t->redis('INCR', "${P}config_version");

# --- WebSocket: heartbeats on one connection, a new connection -----------

my $uid3 = random_uid();
my $ws = OpAMPFleet->connect_ws(port => $t->port);
$ws->send_msg($t->a2s('instance_uid: "' . uid_escape($uid3) . '" '
                      . "sequence_num: 0 capabilities: $CAPS $desc"));
$r = $t->s2a_text($ws->recv_msg(5) // '');
like($r, qr/remote_config \{/, 'a WebSocket member gets the config');
$ws->send_msg($t->a2s('instance_uid: "' . uid_escape($uid3) . '" '
                      . "sequence_num: 1 capabilities: $CAPS "
                      . 'remote_config_status { last_remote_config_hash: "'
                      . join('', map { sprintf '\\%03o', $_ }
                                     unpack 'C*', pack 'H*', $hash)
                      . '" status: RemoteConfigStatuses_APPLIED }'));
$ws->recv_msg(5);
my $k3 = "${P}agent:{" . uid_text($uid3) . '}';
my $conn3 = $t->redis('HGET', $k3, 'conn');
my $mark3 = $t->redis('HGET', $k3, 'settled');
like($mark3, qr/^\d+ [0-9a-f]{16}$/, 'settled over WebSocket');
$ws->send_msg($t->a2s('instance_uid: "' . uid_escape($uid3) . '" '
                      . "sequence_num: 2 capabilities: $CAPS"));
$r = $t->s2a_text($ws->recv_msg(5) // '');
unlike($r, qr/remote_config|flags/, 'a heartbeat gets nothing');
is($t->redis('HGET', $k3, 'sequence_num'), 2, 'and is stored');
$ws->close;
$t->wait_for(sub { ($t->redis('HGET', $k3, 'connected') // '') eq '0' }, 5);
is($t->redis('HGET', $k3, 'settled'), '', 'the disconnect unsettles it');

# a new connection continues the sequence: not the short way (the agent
# is connected again on it), but the config is not sent again, as the
# status it reported says it applied it
$ws = OpAMPFleet->connect_ws(port => $t->port);
$ws->send_msg($t->a2s('instance_uid: "' . uid_escape($uid3) . '" '
                      . "sequence_num: 3 capabilities: $CAPS"));
$r = $t->s2a_text($ws->recv_msg(5) // '');
unlike($r, qr/remote_config \{/, 'the applied config is not sent again');
is($t->redis('HGET', $k3, 'connected'), '1', 'connected again');
my $conn3b = $t->redis('HGET', $k3, 'conn');
isnt($conn3b, $conn3, 'on the new connection');
my $mark3b = $t->redis('HGET', $k3, 'settled');
like($mark3b, qr/^\d+ [0-9a-f]{16}$/, 'settled again');
isnt($mark3b, $mark3, 'with a mark of the new connection');
$ws->close;

$t->done;
done_testing;
