#!/usr/bin/perl

# Promises of docs/redis-schema.md and docs/directives.md about what the
# server sends, each checked in what an agent receives and in Redis:
#
#   own_traces / own_logs / own_metrics offered only with the capability
#   OpAMP connection settings: the admin API refuses them without a
#     destination_endpoint (400); an opamp part only with one (never a
#     heartbeat-only one to an agent that accepts OpAMP settings); offered
#     once per agent and content: not again to the agent's new client
#     (sequence 0, description), nor on full state; again when an operator
#     PUTs them again, and after the agent reports FAILED (or another
#     hash), not before opamp_agent_timeout (HTTP and WebSocket)
#   a Restart never together with a config, a full-state request or
#     connection settings; it waits for a quiet reply (HTTP and WebSocket)
#   an unacknowledged package offer sent again after opamp_agent_timeout
#     and on every new WebSocket connection, not on every poll
#   custom messages sent oldest first, one per ServerToAgent
#   connected_at_ms: when the current connection began
#   selectors on integer and boolean attribute values (not doubles), and
#     an identifying attribute winning over a non-identifying one
#   an oversized ServerToAgent is not sent (WebSocket and plain HTTP),
#     and a warning is logged
#
# Every check here fails with the matching mutation of t/mutate/catalogue.

use strict;
use warnings;

use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use Time::HiRes qw(time sleep);

use OpAMPTest;
use OpAMPFleet;

my $t = OpAMPTest->new;
$t->start_redis;
$t->start_nginx('
        location /admin/ {
            opamp_admin;
        }
        location = /pk {
            opamp;
            opamp_heartbeat_interval 1s;
            opamp_agent_timeout 2s;
        }
        location = /small {
            opamp;
            opamp_max_message_size 1k;
        }', workers => 1);

my $P = 'opamp:';
my $DESC = 'agent_description { identifying_attributes { key: '
           . '"service.name" value { string_value: "offers" } } }';

sub msg {
    my ($uid, $text) = @_;
    return $t->a2s('instance_uid: "' . uid_escape($uid) . '" ' . $text);
}

sub poll {
    my ($uid, $text, %o) = @_;
    my ($s, $h, $b) = $t->http_post(msg($uid, $text), %o);
    my $m = $s && $s == 200 ? $t->s2a($b) : undef;
    return wantarray ? ($m, $s, $b) : $m;
}

sub redis_ms {
    my $tm = $t->redis('TIME');
    return $tm->[0] * 1000 + int($tm->[1] / 1000);
}

sub set_agent_config {
    my ($uid, $body) = @_;
    my $h = OpAMPFleet::config_hash('c.yaml' => [ $body ]);
    my $key = "${P}config:agent:{" . uid_text($uid) . '}';
    $t->redis('DEL', $key);
    $t->redis('HSET', $key, hash => $h, updated_ms => 1,
              'file:c.yaml' => $body);
    $t->redis('INCR', "${P}config_version");
    my $ch = $t->redis('HGET', $t->agent_key($uid), 'channel');
    $t->redis('PUBLISH', $ch, 'config ' . uid_text($uid)) if $ch;
    return $h;
}

sub hash_escape { uid_escape(pack 'H*', $_[0]) }

# --- connection settings: each part only with its capability ---------------

$t->redis('SET', "${P}connection_settings",
          $t->encode('ConnectionSettingsOffers',
                     'own_traces { destination_endpoint: "http://t" } '
                     . 'own_metrics { destination_endpoint: "http://m" } '
                     . 'own_logs { destination_endpoint: "http://l" }'));

my %own = (traces => 0x20, metrics => 0x40, logs => 0x80);
for my $part (sort keys %own) {
    my $u = random_uid();
    my $m = poll($u, "sequence_num: 0 capabilities: "
                     . (0x1 | $own{$part}) . " $DESC");
    my $cs = $m->{connection_settings} // {};
    is($cs->{"own_$part"}{destination_endpoint}, 'http://' . substr($part, 0, 1),
       "own_$part offered to an agent with ReportsOwn\u$part");
    is_deeply([ sort grep { /^own_|^opamp$|^other/ } keys %$cs ],
              [ "own_$part" ], "and no other part ($part)");
}
{
    my $m = poll(random_uid(), "sequence_num: 0 capabilities: 1 $DESC");
    ok($m && !$m->{connection_settings},
       'an agent with none of the capabilities is offered nothing');
}
$t->redis('DEL', "${P}connection_settings");

# --- OpAMP connection settings: only with an endpoint, once per content -----

sub api {
    my ($method, $path, $body, $type) = @_;
    my ($s, undef, $b) = $t->http_post($body // '', -method => $method,
                                       -path => "/admin/$path",
                                       'Content-Type' => $type
                                                         // 'application/json');
    return ($s, $b);
}

# ReportsStatus, AcceptsOpAMPConnectionSettings, ReportsHeartbeat,
# ReportsConnectionSettingsStatus: the supervisor's OpAMP client
my $SCAPS = 0x1 | 0x100 | 0x2000 | 0x8000;
my $EP = 'ws://127.0.0.1:1/v1/opamp';
my $OPAMP = '{"opamp": {"destination_endpoint": "' . $EP . '", "headers": '
            . '{"headers": [{"key": "x-fleet", "value": "blue"}]}}}';

{
    # the admin API refuses an OpAMP offer without a usable endpoint
    for my $c ([ 'no destination_endpoint', '{"opamp": {"headers": {"headers":'
                 . ' [{"key": "a", "value": "b"}]}}}' ],
               [ 'an empty one', '{"opamp": {"destination_endpoint": ""}}' ],
               [ 'an ftp:// one',
                 '{"opamp": {"destination_endpoint": "ftp://x/"}}' ]) {
        my ($s, $b) = api('PUT', 'connection-settings', $c->[1]);
        is($s, 400, "PUT an opamp offer with $c->[0]: 400");
        like($b, qr/destination_endpoint/, 'saying why');
    }
    my ($s) = api('PUT', 'connection-settings',
                  $t->encode('ConnectionSettingsOffers',
                             'opamp { heartbeat_interval_seconds: 5 }'),
                  'application/x-protobuf');
    is($s, 400, 'as protobuf too: 400');
    is($t->redis('EXISTS', "${P}connection_settings"), 0, 'nothing stored');
    ($s) = api('PUT', 'connection-settings', $OPAMP);
    is($s, 200, 'with its endpoint: stored');
    api('DELETE', 'connection-settings');

    # what a control plane stores itself without an endpoint is not offered
    $t->redis('SET', "${P}connection_settings",
              $t->encode('ConnectionSettingsOffers',
                         'opamp { headers { headers { key: "a" value: "b" '
                         . '} } } own_metrics { destination_endpoint: '
                         . '"http://m" }'));
    my $m = poll(random_uid(), 'sequence_num: 0 capabilities: '
                               . (0x1 | 0x100 | 0x2000 | 0x40) . " $DESC");
    is($m->{connection_settings}{own_metrics}{destination_endpoint},
       'http://m', 'stored opamp settings without an endpoint: own_metrics '
       . 'is offered');
    ok(!$m->{connection_settings}{opamp},
       'but no opamp part, nor a heartbeat-only one');
    $m = poll(random_uid(), 'sequence_num: 0 capabilities: '
                            . (0x1 | 0x100 | 0x2000) . " $DESC");
    ok($m && !$m->{connection_settings}, 'an agent that accepts only OpAMP '
       . 'settings: no connection settings at all');
    $m = poll(random_uid(), 'sequence_num: 0 capabilities: '
                            . (0x1 | 0x2000) . " $DESC");
    is($m->{connection_settings}{opamp}{heartbeat_interval_seconds}, 30,
       'one that reports heartbeats and accepts no OpAMP settings: the '
       . 'interval');
    ok(!defined $m->{connection_settings}{opamp}{headers},
       'and nothing else of the opamp part');
    $t->redis('DEL', "${P}connection_settings");
}

{
    # one agent's offer, through the admin API, over plain HTTP
    my $u = random_uid();
    my $m = poll($u, "sequence_num: 0 capabilities: $SCAPS $DESC",
                 -path => '/pk');
    ok($m && !$m->{connection_settings}, 'no offer before an operator sets '
       . 'one');
    my ($s) = api('PUT', 'connection-settings/agents/' . uid_text($u),
                  $OPAMP);
    is($s, 200, 'PUT an OpAMP offer with an endpoint for the agent');
    $m = poll($u, "sequence_num: 1 capabilities: $SCAPS", -path => '/pk');
    my $cs = $m->{connection_settings} // {};
    is($cs->{opamp}{destination_endpoint}, $EP, 'offered: its endpoint');
    is($cs->{opamp}{headers}{headers}[0]{value}, 'blue', 'its header');
    is($cs->{opamp}{heartbeat_interval_seconds}, 1,
       'and the heartbeat interval');
    my $hash = $cs->{hash} // '';
    ok(length $hash, 'with a hash');

    # the supervisor applies it with a new OpAMP client: sequence 0 and
    # its description, as if it had restarted
    for my $seq (0, 1) {
        $m = poll($u, "sequence_num: $seq capabilities: $SCAPS"
                      . ($seq ? '' : " $DESC"), -path => '/pk');
        ok($m && !$m->{connection_settings}, 'the new client, sequence '
           . "$seq: not offered again");
    }
    $m = poll($u, "sequence_num: 5 capabilities: $SCAPS", -path => '/pk');
    ok($m && ($m->{flags} // 0) & 1 && !$m->{connection_settings},
       'asked for its full state (a gap): not offered again');
    $m = poll($u, "sequence_num: 0 capabilities: $SCAPS $DESC "
                  . 'connection_settings_status { last_connection_settings_'
                  . 'hash: "' . uid_escape($hash) . '" status: '
                  . 'ConnectionSettingsStatuses_APPLIED }', -path => '/pk');
    ok($m && !$m->{connection_settings},
       'APPLIED for its hash: not offered again');
    my $offered = $t->agent($u)->{cs_offered_ms};
    $t->wait_for(sub { redis_ms() >= $offered + 2000 }, 10);
    $m = poll($u, "sequence_num: 1 capabilities: $SCAPS", -path => '/pk');
    ok($m && !$m->{connection_settings},
       'nor after opamp_agent_timeout');

    # an operator sends the same settings again
    ($s) = api('PUT', 'connection-settings/agents/' . uid_text($u), $OPAMP);
    is($s, 200, 'PUT the same offer again');
    $m = poll($u, "sequence_num: 2 capabilities: $SCAPS", -path => '/pk');
    $cs = $m->{connection_settings} // {};
    is($cs->{opamp}{destination_endpoint}, $EP, 'offered again');
    ok(length($cs->{hash} // '') && $cs->{hash} ne $hash,
       'under a new hash');
    $hash = $cs->{hash} // '';
    $offered = $t->agent($u)->{cs_offered_ms};

    # the agent reports that it failed to apply it
    my $failed = 'connection_settings_status { last_connection_settings_'
                 . 'hash: "' . uid_escape($hash) . '" status: '
                 . 'ConnectionSettingsStatuses_FAILED error_message: "no" }';
    $m = poll($u, "sequence_num: 0 capabilities: $SCAPS $DESC $failed",
              -path => '/pk');
    if (redis_ms() < $offered + 2000) {
        ok($m && !$m->{connection_settings}, 'FAILED within '
           . 'opamp_agent_timeout of the offer: not offered at once');
    } else {
        pass('(the machine took longer than opamp_agent_timeout)');
    }
    $t->wait_for(sub { redis_ms() >= $offered + 2000 }, 10);
    $m = poll($u, "sequence_num: 1 capabilities: $SCAPS", -path => '/pk');
    $cs = $m->{connection_settings} // {};
    is($cs->{opamp}{destination_endpoint}, $EP,
       'FAILED: offered again after opamp_agent_timeout');
    is($cs->{hash}, $hash, 'the same offer');
    $m = poll($u, "sequence_num: 2 capabilities: $SCAPS", -path => '/pk');
    ok($m && !$m->{connection_settings}, 'once');

    # it reports the hash of other settings (it lost them)
    $offered = $t->agent($u)->{cs_offered_ms};
    $t->wait_for(sub { redis_ms() >= $offered + 2000 }, 10);
    $m = poll($u, "sequence_num: 0 capabilities: $SCAPS $DESC "
                  . 'connection_settings_status { last_connection_settings_'
                  . 'hash: "\001\002" status: '
                  . 'ConnectionSettingsStatuses_APPLIED }', -path => '/pk');
    is(($m->{connection_settings} // {})->{hash}, $hash,
       'another hash reported: offered again');
    api('DELETE', 'connection-settings/agents/' . uid_text($u));
}

{
    # the same over WebSocket: the offer pushed at the PUT, then a new
    # connection of the new client
    my $u = random_uid();
    my $a = OpAMPFleet->connect_ws(port => $t->port);
    $a->send_msg(msg($u, "sequence_num: 0 capabilities: $SCAPS $DESC"));
    my $m = $t->s2a($a->recv_msg(5) // '');
    ok($m && !$m->{connection_settings}, 'WebSocket: registered, no offer');
    my ($s) = api('PUT', 'connection-settings/agents/' . uid_text($u),
                  $OPAMP);
    $m = $t->s2a($a->recv_msg(5) // '');
    is(($m->{connection_settings} // {})->{opamp}{destination_endpoint}, $EP,
       'WebSocket: the offer is pushed');
    $a->close;
    my $b = OpAMPFleet->connect_ws(port => $t->port);
    $b->send_msg(msg($u, "sequence_num: 0 capabilities: $SCAPS $DESC"));
    $m = $t->s2a($b->recv_msg(5) // '');
    ok($m && !$m->{connection_settings},
       'WebSocket: the new client (sequence 0) is answered without it');
    $b->send_msg(msg($u, "sequence_num: 1 capabilities: $SCAPS"));
    $m = $t->s2a($b->recv_msg(5) // '');
    ok($m && !$m->{connection_settings}, 'nor in its next reply');
    ok(!defined $b->recv_msg(1), 'and nothing is pushed');
    $b->close;
    api('DELETE', 'connection-settings/agents/' . uid_text($u));
}

# --- Restart: alone, never with a config or a full-state request -----------

my $RCAPS = 0x1 | 0x2 | 0x400;
{
    my $u = random_uid();
    my $m = poll($u, "sequence_num: 0 capabilities: $RCAPS $DESC");
    ok($m && !$m->{command}, 'a restart agent registered');
    my $h = set_agent_config($u, 'a: 1');
    $t->redis('SET', "${P}command:{" . uid_text($u) . '}', 'restart');
    $m = poll($u, "sequence_num: 1 capabilities: $RCAPS");
    ok($m->{remote_config}, 'a config and a command owed: the config goes');
    ok(!$m->{command}, 'without the command');
    is($t->redis('GET', "${P}command:{" . uid_text($u) . '}'), 'restart',
       'the command waits in Redis');
    $m = poll($u, "sequence_num: 2 capabilities: $RCAPS "
                  . 'remote_config_status { last_remote_config_hash: "'
                  . hash_escape($h) . '" status: RemoteConfigStatuses_APPLIED }');
    ok($m->{command}, 'the next quiet reply carries the command');
    is($m->{command}{type} // 'CommandType_Restart', 'CommandType_Restart',
       'a Restart');
    ok(!$m->{remote_config} && !($m->{flags} // 0),
       'and nothing else');
    is($t->redis('EXISTS', "${P}command:{" . uid_text($u) . '}'), 0,
       'taken from Redis once sent');

    # a sequence gap: ReportFullState, the command waits for the next reply
    $t->redis('SET', "${P}command:{" . uid_text($u) . '}', 'restart');
    $m = poll($u, "sequence_num: 9 capabilities: $RCAPS");
    is(($m->{flags} // 0) & 1, 1, 'a sequence gap: ReportFullState');
    ok(!$m->{command}, 'never together with the command');
    $m = poll($u, "sequence_num: 10 capabilities: $RCAPS $DESC "
                  . 'remote_config_status { last_remote_config_hash: "'
                  . hash_escape($h) . '" status: RemoteConfigStatuses_APPLIED }');
    ok($m->{command} && !($m->{flags} // 0),
       'the full state report is answered with the command alone');

    # connection settings owed on the first message: the command waits
    my $u2 = random_uid();
    $t->redis('SET', "${P}command:{" . uid_text($u2) . '}', 'restart');
    $m = poll($u2, 'sequence_num: 0 capabilities: ' . ($RCAPS | 0x2000)
                   . " $DESC");
    ok($m->{connection_settings}, 'connection settings owed: offered');
    ok(!$m->{command}, 'without the command');
    $m = poll($u2, 'sequence_num: 1 capabilities: ' . ($RCAPS | 0x2000));
    ok($m->{command} && !$m->{connection_settings},
       'the command in the next reply, alone');

    # an agent without AcceptsRestartCommand never gets it
    my $u3 = random_uid();
    poll($u3, "sequence_num: 0 capabilities: 3 $DESC");
    $t->redis('SET', "${P}command:{" . uid_text($u3) . '}', 'restart');
    # (a status report: the long way, which looks for what is owed)
    $m = poll($u3, 'sequence_num: 1 capabilities: 3 health { healthy: true }');
    ok($m && !$m->{command}, 'no command for an agent without the capability');
    is($t->redis('GET', "${P}command:{" . uid_text($u3) . '}'), 'restart',
       'it stays queued');
}

# over WebSocket: a config and a command pushed at once arrive in two
# messages, the config first
{
    my $u = random_uid();
    my $a = OpAMPFleet->connect_ws(port => $t->port);
    $a->send_msg(msg($u, "sequence_num: 0 capabilities: $RCAPS $DESC"));
    ok(defined $a->recv_msg(5), 'a WebSocket restart agent registered');
    $t->redis('SET', "${P}command:{" . uid_text($u) . '}', 'restart');
    my $h = set_agent_config($u, 'ws: 1');
    my $m = $t->s2a($a->recv_msg(5) // '');
    ok($m->{remote_config}, 'WebSocket: the pushed config arrives');
    ok(!$m->{command}, 'without the command');
    $a->send_msg(msg($u, "sequence_num: 1 capabilities: $RCAPS "
                         . 'remote_config_status { last_remote_config_hash: "'
                         . hash_escape($h) . '" status: '
                         . 'RemoteConfigStatuses_APPLIED }'));
    $m = $t->s2a($a->recv_msg(5) // '');
    ok($m->{command} && !$m->{remote_config},
       'WebSocket: the command follows alone in the next reply');
    $a->close;
}

# --- packages: an unacknowledged offer is sent again ------------------------

my $pk = $t->encode('PackagesAvailable',
    'packages { key: "agent" value { type: PackageType_TopLevel '
    . 'version: "1.0" } } all_packages_hash: "\252\273"');
$t->redis('HSET', "${P}packages", hash => 'aabb', offer => $pk);
my $PCAPS = 0x1 | 0x8;
{
    my $u = random_uid();
    my $m = poll($u, "sequence_num: 0 capabilities: $PCAPS $DESC", -path => '/pk');
    ok($m->{packages_available}, 'packages offered');
    my $offered = $t->agent($u)->{offered_packages_ms};
    ok($offered, 'offered_packages_ms recorded');
    $m = poll($u, "sequence_num: 1 capabilities: $PCAPS", -path => '/pk');
    if (redis_ms() < $offered + 2000) {
        ok(!$m->{packages_available},
           'not acknowledged, within opamp_agent_timeout: not sent again');
    } else {
        pass('(the machine took longer than opamp_agent_timeout)');
    }
    # past the timeout, measured on Redis's clock as the script does
    $t->wait_for(sub { redis_ms() >= $offered + 2000 }, 10);
    $m = poll($u, "sequence_num: 2 capabilities: $PCAPS", -path => '/pk');
    ok($m->{packages_available},
       'not acknowledged after opamp_agent_timeout: sent again');
    ok($t->agent($u)->{offered_packages_ms} >= $offered + 2000,
       'offered_packages_ms renewed');
    $m = poll($u, "sequence_num: 3 capabilities: $PCAPS package_statuses { "
                  . 'server_provided_all_packages_hash: "\252\273" }',
              -path => '/pk');
    ok($m && !$m->{packages_available}, 'acknowledged: not sent');
    $t->wait_for(sub { redis_ms() >= $offered + 4100 }, 10);
    $m = poll($u, "sequence_num: 4 capabilities: $PCAPS", -path => '/pk');
    ok($m && !$m->{packages_available},
       'acknowledged, past the timeout: still not sent');
}
{
    # every new WebSocket connection gets the offer again
    my $u = random_uid();
    my $a = OpAMPFleet->connect_ws(port => $t->port);
    $a->send_msg(msg($u, "sequence_num: 0 capabilities: $PCAPS $DESC"));
    my $m = $t->s2a($a->recv_msg(5) // '');
    ok($m->{packages_available}, 'WebSocket: packages offered');
    $a->close;
    $t->wait_for(sub { ($t->agent($u)->{connected} // '') eq '0' }, 5);
    my $b = OpAMPFleet->connect_ws(port => $t->port);
    $b->send_msg(msg($u, "sequence_num: 1 capabilities: $PCAPS"));
    $m = $t->s2a($b->recv_msg(5) // '');
    ok($m->{packages_available},
       'a new WebSocket connection (sequence continues): offered again');
    $b->close;
}
$t->redis('DEL', "${P}packages");

# --- custom messages: oldest first, one per ServerToAgent -------------------

{
    my $u = random_uid();
    my $CC = 'custom_capabilities { capabilities: "io.example.chat" }';
    my $m = poll($u, "sequence_num: 0 capabilities: 1 $DESC");
    my $ob = "${P}outbox:{" . uid_text($u) . '}';
    $t->redis('RPUSH', $ob, "io.example.chat\nnote\nfirst",
              "io.example.chat\nnote\nsecond", "io.example.chat\nnote\nthird");
    my @got;
    for my $seq (1 .. 4) {
        $m = poll($u, "sequence_num: $seq capabilities: 1 $CC");
        push @got, $m->{custom_message}{data} if $m->{custom_message};
    }
    is_deeply(\@got, [qw(first second third)],
              'queued custom messages arrive oldest first, one per reply');
    is($t->redis('EXISTS', $ob), 0, 'and are removed once sent');
}

# --- connected_at_ms ------------------------------------------------------------

{
    my $u = random_uid();
    my $a = OpAMPFleet->connect_ws(port => $t->port);
    $a->send_msg(msg($u, "sequence_num: 0 capabilities: 1 $DESC"));
    $a->recv_msg(5);
    my $h = $t->agent($u);
    is($h->{connected_at_ms}, $h->{first_seen_ms},
       'connected_at_ms: the first message of the first connection');
    my $c1 = $h->{connected_at_ms};
    $t->wait_for(sub { redis_ms() > $c1 + 5 }, 5);
    # a status report (the long way; a heartbeat would take the short one)
    $a->send_msg(msg($u, "sequence_num: 1 capabilities: 1 "
                         . 'health { healthy: true }'));
    $a->recv_msg(5);
    $h = $t->agent($u);
    ok($h->{last_seen_ms} > $c1 && $h->{healthy} eq '1',
       'a later message on the same connection');
    is($h->{connected_at_ms}, $c1, 'leaves connected_at_ms as it was');
    $a->close;
    $t->wait_for(sub { ($t->agent($u)->{connected} // '') eq '0' }, 5);
    $t->wait_for(sub { redis_ms() > $c1 + 10 }, 5);
    my $b = OpAMPFleet->connect_ws(port => $t->port);
    $b->send_msg(msg($u, "sequence_num: 2 capabilities: 1"));
    $b->recv_msg(5);
    $h = $t->agent($u);
    ok($h->{connected_at_ms} > $c1,
       'a new connection: connected_at_ms is its first message');
    is($h->{connected_at_ms}, $h->{last_seen_ms}, 'exactly');
    $b->close;
}

# --- attributes: an identifying attribute wins over a non-identifying one ---

{
    my $u = random_uid();
    my $h = OpAMPFleet::config_hash('c.yaml' => [ 'dup: 1' ]);
    $t->redis('HSET', "${P}config:group:dup", selector => 'tier=ident',
              priority => 1, hash => $h, updated_ms => 1,
              'file:c.yaml' => 'dup: 1');
    $t->redis('ZADD', "${P}groups", 1, 'dup');
    $t->redis('INCR', "${P}config_version");
    my $m = poll($u, 'sequence_num: 0 capabilities: 3 agent_description { '
                     . 'identifying_attributes { key: "tier" value { '
                     . 'string_value: "ident" } } non_identifying_attributes '
                     . '{ key: "tier" value { string_value: "nonident" } } }');
    ok($m->{remote_config}, 'a key in both attribute lists: the '
       . 'identifying value is matched (tier=ident gets its group config)');
    is($t->agent($u)->{desired_config}, 'group:dup', 'and recorded so');
    $t->redis('DEL', "${P}config:group:dup");
    $t->redis('ZREM', "${P}groups", 'dup');
    $t->redis('INCR', "${P}config_version");
}

# --- selectors on integer and boolean attributes (protocol.md) -------------

{
    my $h = OpAMPFleet::config_hash('c.yaml' => [ 'typed: 1' ]);
    $t->redis('HSET', "${P}config:group:typed",
              selector => 'replicas=42,canary=true,offset=-5',
              priority => 1, hash => $h, updated_ms => 1,
              'file:c.yaml' => 'typed: 1');
    $t->redis('ZADD', "${P}groups", 1, 'typed');
    $t->redis('INCR', "${P}config_version");
    my $attrs = sub {
        my ($replicas, $canary, $offset) = @_;
        return 'agent_description { identifying_attributes { key: '
               . '"service.name" value { string_value: "typed" } } '
               . join(' ', map { "non_identifying_attributes { key: \"$_->[0]\" "
                                 . "value { $_->[1] } }" }
                           [ replicas => $replicas ], [ canary => $canary ],
                           [ offset => $offset ])
               . ' }';
    };
    my @cases = (
        [ 'int 42, bool true, int -5', 1, 'int_value: 42', 'bool_value: true',
          'int_value: -5' ],
        [ 'int 43', 0, 'int_value: 43', 'bool_value: true', 'int_value: -5' ],
        [ 'bool false', 0, 'int_value: 42', 'bool_value: false',
          'int_value: -5' ],
        [ 'a double 42 (not matched)', 0, 'double_value: 42',
          'bool_value: true', 'int_value: -5' ],
        [ 'a string "42" and "true" (the same text)', 1,
          'string_value: "42"', 'string_value: "true"',
          'string_value: "-5"' ],
    );
    for my $c (@cases) {
        my ($what, $match, @v) = @$c;
        my $m = poll(random_uid(), 'sequence_num: 0 capabilities: 3 '
                                   . $attrs->(@v));
        is($m->{remote_config} ? 1 : 0, $match,
           "selector replicas=42,canary=true,offset=-5, agent with $what: "
           . ($match ? 'matched' : 'not matched'));
    }
    $t->redis('DEL', "${P}config:group:typed");
    $t->redis('ZREM', "${P}groups", 'typed');
    $t->redis('INCR', "${P}config_version");
}

# --- integer attributes: all 64 bits, exactly (Lua's numbers are doubles) ---

{
    my $h = OpAMPFleet::config_hash('c.yaml' => [ 'wide: 1' ]);
    $t->redis('HSET', "${P}config:group:wide",
              selector => 'n=9007199254740993,min=-9223372036854775808,'
                          . 'max=9223372036854775807',
              priority => 1, hash => $h, updated_ms => 1,
              'file:c.yaml' => 'wide: 1');
    $t->redis('ZADD', "${P}groups", 1, 'wide');
    $t->redis('INCR', "${P}config_version");
    my $attrs = sub {
        my ($n) = @_;
        return 'agent_description { '
               . join(' ', map { "non_identifying_attributes { key: \"$_->[0]\" "
                                 . "value { int_value: $_->[1] } }" }
                           [ n => $n ], [ min => '-9223372036854775808' ],
                           [ max => '9223372036854775807' ])
               . ' }';
    };
    # 2^53 + 1 is the first integer a double cannot hold: read as one, it
    # would be 2^53, and 2^53 + 2 would not differ from it either
    for my $c ([ '9007199254740993', 1 ], [ '9007199254740992', 0 ],
               [ '9007199254740994', 0 ]) {
        my $m = poll(random_uid(), 'sequence_num: 0 capabilities: 3 '
                                   . $attrs->($c->[0]));
        is($m->{remote_config} ? 1 : 0, $c->[1],
           "selector n=9007199254740993 and the int64 extremes, agent with "
           . "n=$c->[0]: " . ($c->[1] ? 'matched' : 'not matched'));
    }
    $t->redis('DEL', "${P}config:group:wide");
    $t->redis('ZREM', "${P}groups", 'wide');
    $t->redis('INCR', "${P}config_version");
}

# --- opamp_max_message_size on what the server sends ---------------------------

{
    my $big = 'x' x 2000;

    # plain HTTP: the reply would carry a 2000-byte config
    my $u = random_uid();
    my ($m, $s) = poll($u, "sequence_num: 0 capabilities: 3 $DESC",
                       -path => '/small');
    is($s, 200, 'opamp_max_message_size 1k: a small reply is sent');
    set_agent_config($u, 'small: 1');
    ($m, $s) = poll($u, 'sequence_num: 1 capabilities: 3', -path => '/small');
    ok($m && $m->{remote_config}, 'a config that fits is sent');
    set_agent_config($u, $big);
    my ($m2, $s2, $b2) = poll($u, 'sequence_num: 2 capabilities: 3',
                              -path => '/small');
    is($s2, 500, 'HTTP: a ServerToAgent over opamp_max_message_size is not '
       . 'sent (500)');
    ok(index($b2, $big) < 0, 'and the config is nowhere in the answer');
    ok($t->wait_for(sub { $t->error_log =~ /\[warn\].*opamp: ServerToAgent of \d+ bytes exceeds opamp_max_message_size, not sent/ }, 5),
       'a warning is logged');

    # WebSocket: the pushed config does not fit
    my $u2 = random_uid();
    my $a = OpAMPFleet->connect_ws(port => $t->port, path => '/small');
    $a->send_msg(msg($u2, "sequence_num: 0 capabilities: 3 $DESC"));
    ok(defined $a->recv_msg(5), 'WebSocket: registered under the 1k limit');
    set_agent_config($u2, 'small: 2');
    $m = $t->s2a($a->recv_msg(5) // '');
    ok($m->{remote_config}, 'WebSocket: a config that fits is pushed');
    my $warns = () = $t->error_log =~ /exceeds opamp_max_message_size, not sent/g;
    set_agent_config($u2, $big);
    ok($t->wait_for(sub {
           my $n = () = $t->error_log =~ /exceeds opamp_max_message_size, not sent/g;
           $n > $warns }, 5),
       'WebSocket: the oversized push is refused with a warning');
    # the same wait that saw the small push: nothing arrives, and the
    # connection stays open (a ping of ours is answered)
    ok(!defined $a->recv_msg(1), 'WebSocket: nothing oversized is sent');
    ok(!$a->{closed}, 'and the connection stays open');
    $a->send_msg(msg($u2, 'sequence_num: 1 capabilities: 3 '
                          . 'remote_config_status { last_remote_config_hash: "'
                          . hash_escape(OpAMPFleet::config_hash('c.yaml' => [ 'small: 2' ]))
                          . '" status: RemoteConfigStatuses_APPLIED }'));
    my $r = $a->recv_msg(5);
    ok(defined $r && index($r, $big) < 0 && !$a->{closed},
       "its next message is answered, without the oversized config");
    $a->close;
}

is_deeply([ grep { /\[(error)\]/ } split /\n/, $t->error_log ], [],
          'no [error] in the log');

$t->done;
done_testing;
