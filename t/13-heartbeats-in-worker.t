#!/usr/bin/perl

# opamp_heartbeat_recheck: once a WebSocket agent's heartbeat went to Redis
# and was found owed nothing, the worker answers the heartbeats that follow
# in sequence on that connection itself, until the re-check time or until
# something may have changed (a message on its own or the fleet's channel,
# a Redis connection made again).  What users rely on: such a heartbeat is
# answered owed nothing without a beats.lua call; every change the admin
# API makes still reaches the agent at once; a status change still goes
# to Redis; Redis's sequence_num lags but the agent stays in sequence,
# on the connection and on its next one; the lease is renewed in time, by
# a renewal that checks only the agent's hash.

use strict;
use warnings;

use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use Time::HiRes qw(time sleep);

use OpAMPTest;
use OpAMPFleet;

my $RECHECK = 3;      # seconds
my $TIMEOUT = 20;     # opamp_agent_timeout: half of it is above RECHECK
my $P = 'opamp:';

my $t = OpAMPTest->new;
$t->start_redis;
$t->start_nginx('
        location /admin/ { opamp_admin; }
        location = /metrics { opamp_metrics; }', workers => 1,
        http => "opamp_heartbeat_recheck ${RECHECK}s;"
                . " opamp_agent_timeout ${TIMEOUT}s;"
                . ' opamp_heartbeat_interval 10s;'
                . ' opamp_heartbeat_batch_delay 0;');

$t->slowlog_all;

# ReportsStatus, AcceptsRemoteConfig, AcceptsRestartCommand (0x400),
# ReportsHealth (0x800)
my $CAPS = 0x1 | 0x2 | 0x400 | 0x800;
# the agent's full state, as it sends it first on a connection
sub full_msg {
    my ($uid, $seq) = @_;
    return OpAMPFleet::with_uid(OpAMPFleet::template(
        "sequence_num: $seq capabilities: $CAPS health { healthy: true } "
        . 'agent_description { identifying_attributes { key: '
        . '"service.name" value { string_value: "inworker" } } }'), $uid);
}

sub metric {
    my ($name) = @_;
    my (undef, undef, $b) = $t->http_post('', -method => 'GET',
                                          -path => '/metrics');
    return $b =~ /^\Q$name\E (\d+)$/m ? $1 : undef;
}

sub in_worker { metric('opamp_heartbeats_in_worker_total') }

sub key_of { $P . 'agent:{' . OpAMPFleet::uid_text($_[0]{uid}) . '}' }

sub stored { $t->redis('HGET', key_of($_[0]), $_[1]) // '' }

# the agent's next message: a heartbeat, or with $extra in it
sub beat {
    my ($ag, $extra) = @_;
    $ag->{seq}++;
    $ag->send_msg(OpAMPFleet::encode('AgentToServer',
        'instance_uid: "' . OpAMPFleet::uid_escape($ag->{uid})
        . "\" sequence_num: $ag->{seq} capabilities: $CAPS "
        . ($extra // '')));
    my $m = $ag->recv_msg(10);
    return defined $m ? OpAMPFleet::decode('ServerToAgent', $m) : undef;
}

sub owed_nothing {
    my ($text) = @_;
    return defined $text
           && $text !~ /flags|remote_config|command|error_response|custom/;
}

sub connect_agent {
    my ($uid, $seq) = @_;
    my $ag = OpAMPFleet->connect_ws(port => $t->port);
    $ag->{uid} = $uid;
    $ag->{seq} = $seq;
    $ag->send_msg(full_msg($uid, $seq));
    my $m = $ag->recv_msg(5) // die "agent not answered\n";
    return ($ag, OpAMPFleet::decode('ServerToAgent', $m));
}

my ($ag) = connect_agent(OpAMPFleet::random_uid(), 0);

# --- the first heartbeat goes to Redis, the next ones do not ---------------

my $calls = $t->beats_calls;
ok(owed_nothing(beat($ag)), 'the first heartbeat is answered, owed nothing');
is($t->beats_calls - $calls, 1, 'from Redis (one beats.lua call)');
like(stored($ag, 'settled'), qr/^\d+ [0-9a-f]{16}$/, 'the agent is settled');
is(stored($ag, 'sequence_num'), 1, 'Redis holds its sequence_num');
my $seen = stored($ag, 'last_seen_ms');
my $expires = stored($ag, 'expires_ms');

my $before = in_worker();
$calls = $t->beats_calls;
my $empty = grep { owed_nothing(beat($ag)) } 1 .. 5;
is($empty, 5, 'five more heartbeats are answered, owed nothing');
is($t->beats_calls - $calls, 0, 'none of them reached Redis');
is(in_worker() - $before, 5, 'opamp_heartbeats_in_worker_total counts them');
is(stored($ag, 'sequence_num'), 1, 'Redis\'s sequence_num lags');
is(stored($ag, 'last_seen_ms'), $seen, 'and so does last_seen_ms');

# --- at the re-check time one goes to Redis, in sequence ------------------

sleep $RECHECK + 0.2;
$calls = $t->beats_calls;
my $r = beat($ag);
ok(owed_nothing($r), 'the heartbeat after the re-check time is answered, '
   . 'owed nothing: no full state asked, the worker vouched for the ones '
   . 'between') or diag($r);
is($t->beats_calls - $calls, 1, 'it went to Redis');
is(stored($ag, 'sequence_num'), $ag->{seq}, 'Redis holds its sequence_num');
ok(stored($ag, 'expires_ms') > $expires + $RECHECK * 1000,
   'and the lease is renewed');
ok(stored($ag, 'last_seen_ms') > $seen, 'last_seen_ms moves');

# --- a status change goes to Redis ------------------------------------------

beat($ag) for 1 .. 2;
$calls = $t->beats_calls;
$r = beat($ag, 'health { healthy: false last_error: "disk full" }');
ok(defined $r && $r !~ /error_response|flags/,
   'a health change is answered, no full state asked') or diag($r);
is(stored($ag, 'healthy'), '0', 'and stored in Redis');
is(stored($ag, 'sequence_num'), $ag->{seq}, 'with its sequence_num');
ok(owed_nothing(beat($ag)), 'the next heartbeat goes to Redis again');
is($t->beats_calls - $calls, 1, 'one beats.lua call');
beat($ag, 'health { healthy: true }');
beat($ag);

# --- other capabilities go to Redis -----------------------------------------

beat($ag) for 1 .. 2;
$calls = $t->beats_calls;
$ag->{seq}++;
$ag->send_msg(OpAMPFleet::encode('AgentToServer',
    'instance_uid: "' . OpAMPFleet::uid_escape($ag->{uid})
    . "\" sequence_num: $ag->{seq} capabilities: @{[ $CAPS | 0x4 ]}"));
$ag->recv_msg(5);
is(stored($ag, 'capabilities'), $CAPS | 0x4,
   'a heartbeat with other capabilities reaches Redis');
beat($ag);
is(stored($ag, 'capabilities'), $CAPS, 'and so do the ones after it');
beat($ag);

# --- the admin API's changes reach the agent at once ------------------------

$before = in_worker();
ok(owed_nothing(beat($ag)), 'a heartbeat answered in the worker');
is(in_worker() - $before, 1, 'counted');

my ($st) = $t->http_post('', -method => 'POST', -path => '/admin/agents/'
                         . OpAMPFleet::uid_text($ag->{uid}) . '/restart');
is($st, 202, 'a restart command through the admin API');
my $m = $ag->recv_msg(5);
$m = OpAMPFleet::decode('ServerToAgent', $m) if defined $m;
like($m // '', qr/command \{/, 'reaches the agent at once');
$calls = $t->beats_calls;
ok(owed_nothing(beat($ag)), 'its next heartbeat is owed nothing');
is($t->beats_calls - $calls, 1, 'and was asked of Redis');

my %files = ('w.yaml' => [ "w: 1\n", 'text/yaml' ]);
my $hash = OpAMPFleet::config_hash(%files);
beat($ag) for 1 .. 2;
($st) = $t->http_post(
    '{"selector":"service.name=inworker","priority":1,"files":{"w.yaml":'
    . '{"body":"w: 1\\n","content_type":"text/yaml"}}}',
    -method => 'PUT', -path => '/admin/configs/groups/inworker',
    'Content-Type' => 'application/json');
is($st, 200, 'a group config through the admin API');
$m = $ag->recv_msg(5);
$m = OpAMPFleet::decode('ServerToAgent', $m) if defined $m;
like($m // '', qr/remote_config \{.*key: "w.yaml"/s,
     'reaches the settled agent at once');
my $hash_esc = join '', map { sprintf '\\%03o', $_ } unpack 'C*',
                                                           pack 'H*', $hash;
$r = beat($ag, 'remote_config_status { last_remote_config_hash: "'
               . $hash_esc . '" status: RemoteConfigStatuses_APPLIED }');
ok(defined $r && $r !~ /remote_config \{/, 'APPLIED is answered');
is(stored($ag, "config_status"), "APPLIED", "and stored");

# --- a custom message written directly is seen at the re-check -------------

beat($ag) for 1 .. 2;
$before = in_worker();
ok(owed_nothing(beat($ag)), 'settled, answered in the worker');
is(in_worker() - $before, 1, 'counted');
$t->redis('RPUSH', "${P}outbox:{" . OpAMPFleet::uid_text($ag->{uid}) . '}',
          "io.example.x\nt\nhello");
# the agent has not declared the capability: declared in a message of its
# own, which goes to Redis; the queued entry goes with its answer or the
# next one
$r = beat($ag, 'custom_capabilities { capabilities: "io.example.x" }');
$r .= beat($ag) // '' unless ($r // '') =~ /custom_message/;
like($r // '', qr/custom_message \{.*data: "hello"/s,
     'a custom message queued directly reaches it');

# written directly and unannounced, for an agent settled in the worker: at
# the first heartbeat after the re-check time at the latest
beat($ag) for 1 .. 2;
$t->redis('RPUSH', "${P}outbox:{" . OpAMPFleet::uid_text($ag->{uid}) . '}',
          "io.example.x\nt\nlater");
my $got = 0;
my $t0 = time;
while (time - $t0 < $RECHECK + 2) {
    my $x = beat($ag) // '';
    if ($x =~ /data: "later"/) { $got = 1; last }
    sleep 0.25;
}
ok($got, sprintf 'an unannounced direct write is seen within the re-check '
   . 'time (%.1f s)', time - $t0);

# --- a Redis connection made again: Redis is asked ---------------------------

beat($ag) for 1 .. 2;
$before = in_worker();
beat($ag);
is(in_worker() - $before, 1, 'answered in the worker');
my $subs = sub {
    my $r = $t->redis('PUBSUB', 'NUMSUB', "${P}fleet");
    return $r->[1];
};
$t->redis('CLIENT', 'KILL', 'TYPE', 'pubsub');
$t->wait_for(sub { $subs->() >= 1 }, 10)
    or BAIL_OUT('the worker did not subscribe again');
$calls = $t->beats_calls;
beat($ag);
is($t->beats_calls - $calls, 1, 'after the pub/sub connection was lost, '
   . 'the next heartbeat goes to Redis');

# --- out of sequence on the connection: Redis asks for the full state ------

beat($ag);
$ag->{seq} += 5;
$r = beat($ag);
like($r // '', qr/flags: 1\b/, 'a heartbeat out of sequence is asked for '
     . 'the full state');

# --- the next connection stays in sequence ---------------------------------

$ag->send_msg(full_msg($ag->{uid}, ++$ag->{seq}));
$ag->recv_msg(5);
beat($ag) for 1 .. 4;
my $last = $ag->{seq};
isnt(stored($ag, 'sequence_num'), $last,
     'heartbeats answered in the worker: Redis\'s sequence_num lags');
$ag->close;
$t->wait_for(sub { stored($ag, 'connected') eq '0' }, 5);
is(stored($ag, 'sequence_num'), $last,
   'the disconnect stores the last sequence_num');

my ($ag2, $first) = connect_agent($ag->{uid}, $last + 1);
unlike($first, qr/flags: 1\b/,
       'the agent connecting again in sequence is not asked for its full '
       . 'state');

# a takeover (the agent connects again while its old connection is still
# held): the old worker stores nothing, so the heartbeats it answered
# leave a gap; the new connection takes the settled agent over all the
# same, and the agent is asked for its full state (directives.md)
beat($ag2) for 1 .. 3;
isnt(stored($ag2, 'sequence_num'), $ag2->{seq},
     'heartbeats answered in the worker on the second connection');
# as opamp-go does on a new connection: its description, no health
my $ag3 = OpAMPFleet->connect_ws(port => $t->port);
$ag3->{uid} = $ag->{uid};
$ag3->{seq} = $ag2->{seq} + 1;
$ag3->send_msg(OpAMPFleet::with_uid(OpAMPFleet::template(
    "sequence_num: $ag3->{seq} capabilities: $CAPS "
    . 'agent_description { identifying_attributes { key: '
    . '"service.name" value { string_value: "inworker" } } }'),
    $ag->{uid}));
my $taken = $ag3->recv_msg(5);
$taken = OpAMPFleet::decode('ServerToAgent', $taken) if defined $taken;
unlike($taken // '', qr/agent_identification|error_response/,
       'the new connection takes the agent over (no new uid)')
    or diag($taken // 'no answer');
like($taken // '', qr/flags: 1\b/,
     'the agent is asked for its full state') or diag($taken // 'no answer');
my $gone = 0;
for (1 .. 10) {
    last if !defined $ag2->recv_msg(1) && ($gone = $ag2->{closed} // 0);
}
is($gone, 1008, 'and its second connection is closed (1008)');
$ag3->close;

# --- opamp_heartbeat_recheck 0 ---------------------------------------------

$t->stop_nginx;
$t->start_nginx('
        location = /metrics { opamp_metrics; }', workers => 1,
        http => 'opamp_heartbeat_recheck 0; opamp_heartbeat_batch_delay 0;');
($ag) = connect_agent(OpAMPFleet::random_uid(), 0);
$calls = $t->beats_calls;
beat($ag) for 1 .. 4;
is($t->beats_calls - $calls, 4, 'with 0 every heartbeat goes to Redis');
is(in_worker(), 0, 'none answered in the worker');
is(stored($ag, 'sequence_num'), 4, 'Redis holds the last sequence_num');
$ag->close;

# --- never longer than half of opamp_agent_timeout: the lease --------------

# no config is owed (an offer out would send the heartbeat to Redis when
# it is due again, opamp_agent_timeout after it was made)
$t->stop_nginx;
$t->redis('DEL', "${P}config:group:inworker");
$t->redis('ZREM', "${P}groups", 'inworker');
$t->redis('INCR', "${P}config_version");
$t->start_nginx('
        location = /metrics { opamp_metrics; }', workers => 1,
        http => 'opamp_heartbeat_recheck 1h; opamp_agent_timeout 4s;'
                . ' opamp_heartbeat_interval 1s;'
                . ' opamp_heartbeat_batch_delay 0;');
($ag) = connect_agent(OpAMPFleet::random_uid(), 0);
beat($ag);
$calls = $t->beats_calls;

# the EXISTS commands on the agent's keys since the slow log was emptied
# (it logs every command, those of scripts too): the full short way
# makes them (outbox, command, status), a lease renewal does not
sub exists_calls {
    my ($uid) = @_;
    my $u = OpAMPFleet::uid_text($uid);
    return scalar grep {
        my $a = $_->[3];
        uc($a->[0] // '') eq 'EXISTS' && grep { index($_, $u) >= 0 } @$a
    } @{ $t->redis('SLOWLOG', 'GET', 100000) };
}

my $lapsed = 0;
my $seqs_ok = 1;
$t0 = time;
while (time - $t0 < 5) {
    $r = beat($ag);
    $seqs_ok = 0 unless owed_nothing($r);
    $lapsed++ if stored($ag, 'expires_ms') < int(time * 1000);
    sleep 0.5;
}
my $exists = exists_calls($ag->{uid});
ok(in_worker() > 0, 'heartbeats answered in the worker');
ok($t->beats_calls - $calls >= 2,
   'and one goes to Redis at least every half of opamp_agent_timeout, '
   . 'whatever opamp_heartbeat_recheck says');
ok($t->beats_calls - $calls <= 4,
   'and not more often (a renewal moves the next one on)');
is($lapsed, 0, 'the agent\'s lease never lapsed');
ok($seqs_ok, 'every heartbeat was answered owed nothing: no full state '
   . 'asked, the renewals stay in sequence');
is($exists, 0,
   'the renewals check only the agent\'s hash (no EXISTS: the outbox and '
   . 'command keys are left to the re-check)');
is(stored($ag, 'sequence_num') >= $ag->{seq} - 4 ? 1 : 0, 1,
   'Redis\'s sequence_num follows the renewals');

# a control plane empties the agent's settled without publishing: the
# next renewal sees it (the long way runs and settles the agent again),
# long before the re-check
$t->redis('HSET', key_of($ag), 'settled', '');
$t0 = time;
while (time - $t0 < 4 && stored($ag, 'settled') eq '') {
    beat($ag);
    sleep 0.5;
}
like(stored($ag, 'settled'), qr/^\d+ [0-9a-f]{16}$/,
     'settled emptied directly is seen within half of '
     . 'opamp_agent_timeout, at the lease renewal');
ok(owed_nothing(beat($ag)), 'and the agent is still owed nothing');
$ag->close;

# an agent whose heartbeats come about half of the timeout apart, with
# jitter (1.9 s, then 2.3 s, with a 4 s timeout): a heartbeat just before
# half of the timeout renews the lease too, as the next one, as far
# apart, would come after the lease ran out
($ag) = connect_agent(OpAMPFleet::random_uid(), 0);
beat($ag);
$lapsed = 0;
for my $gap (1.9, 2.3, 1.9, 2.3) {
    sleep $gap;
    $lapsed++ if stored($ag, 'expires_ms') < int(time * 1000);
    beat($ag);
}
is($lapsed, 0, 'the lease of an agent whose heartbeats are half of the '
   . 'timeout apart, with jitter, never lapses');
$ag->close;

$t->done;
done_testing;
