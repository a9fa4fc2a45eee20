#!/usr/bin/perl

# Debug logging is safe (docs/operations.md "Debug logging"): with
# `error_log ... debug` every worker keeps running while agents connect
# over both transports, the departed-agent sweep runs and Redis links come
# and go; the module's own timers (sweep, Redis timeouts and reconnects)
# name a connection whose fd is -1 in nginx's timer lines, and the debug
# lines name each agent's uid and what its reply carried.
# `debug_connection` turns those lines on for one agent's address only.

use strict;
use warnings;

use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use Time::HiRes qw(time sleep);

use OpAMPTest;
use OpAMPFleet;

# --- part 1: error_log ... debug for the whole server ----------------------

my $t = OpAMPTest->new;
$t->start_redis;
$t->start_nginx('', workers => 2, error_log_level => 'debug',
                http => 'opamp_agent_retention 2s;',
                location => 'opamp_heartbeat_interval 1s;');

my @workers = $t->worker_pids;
is(scalar @workers, 2, 'two workers with error_log debug');

my $uid = random_uid;
my $text = uid_text($uid);
my ($st, undef, $body) = $t->http_post($t->a2s(
    'instance_uid: "' . uid_escape($uid) . '" sequence_num: 0 '
    . 'capabilities: 0x2003 '
    . 'agent_description { identifying_attributes { key: "service.name" '
    . 'value { string_value: "debugged" } } }'));
is($st, 200, 'an HTTP agent is answered');
ok($t->s2a($body), 'the answer decodes');

my $wuid = random_uid;
my $ws = OpAMPFleet->connect_ws(port => $t->port);
$ws->send_msg($t->a2s('instance_uid: "' . uid_escape($wuid) . '" '
                      . 'sequence_num: 0 capabilities: 0x2001'));
ok(defined $ws->recv_msg(5), 'a WebSocket agent is answered');

# an agent that leaves: the sweep takes it after the retention (2 s; the
# sweep runs every second); the sweep's timer fires several times meanwhile
my $gone = random_uid;
$t->http_post($t->a2s('instance_uid: "' . uid_escape($gone) . '" '
                      . 'sequence_num: 0 capabilities: 0x2001'));
$t->redis('HSET', $t->agent_key($gone), 'last_seen_ms', 1, 'expires_ms', 1);
$t->redis('ZADD', 'opamp:agents', 1, uid_text($gone));
ok($t->wait_for(sub { !$t->redis('EXISTS', $t->agent_key($gone)) }, 15),
   'the departed-agent sweep ran with debug logging');

# a Redis outage and its end: the links' own timers (command timeouts,
# reconnect backoff) fire
$t->stop_redis;
sleep 1;
$t->start_redis;
ok($t->wait_for(sub { $t->workers_ready(2) }, 15),
   'the workers reconnect to Redis');
($st) = $t->http_post($t->a2s('instance_uid: "' . uid_escape($uid) . '" '
                              . 'sequence_num: 1 capabilities: 0x2003'));
is($st, 200, 'agents are served after the outage');

is_deeply([$t->worker_pids], \@workers, 'no worker was replaced');

my $log = $t->error_log;
like($log, qr/event timer add: -1: /,
     "the module's own timers name a connection with fd -1");
unlike($log, qr/event timer (add|del): (?!-1:)-?\d{5,}: /,
       'no timer line names a garbage fd');
like($log, qr/\[debug\] .*opamp agent \Q$text\E sequence 0 /,
     'a debug line names the HTTP agent, its sequence number');
like($log, qr/\[debug\] .*opamp agent \Q${\ uid_text($wuid)}\E sequence 0 /,
     'and the WebSocket agent');
like($log, qr/\[debug\] .*opamp reply flags 0x[0-9a-f]+, remote config/,
     'a debug line says what a reply carried');
unlike($log, qr/exited on signal/, 'no worker crashed');
$ws->close;
$t->done;

# --- part 2: debug_connection for one address ------------------------------

my $t2 = OpAMPTest->new;
$t2->start_redis;
$t2->start_nginx('', workers => 1, error_log_level => 'info',
                 events => '    debug_connection 127.0.0.2;');

my ($quiet, $loud, $wloud) = (random_uid, random_uid, random_uid);
($st) = $t2->http_post($t2->a2s('instance_uid: "' . uid_escape($quiet)
                                . '" sequence_num: 0 capabilities: 1'));
is($st, 200, 'an agent from 127.0.0.1 is answered');
($st) = $t2->http_post($t2->a2s('instance_uid: "' . uid_escape($loud)
                                . '" sequence_num: 0 capabilities: 1'),
                       -local => '127.0.0.2');
is($st, 200, 'an agent from 127.0.0.2 is answered');
my $w2 = OpAMPFleet->connect_ws(port => $t2->port, local => '127.0.0.2');
$w2->send_msg($t2->a2s('instance_uid: "' . uid_escape($wloud) . '" '
                       . 'sequence_num: 0 capabilities: 1'));
ok(defined $w2->recv_msg(5), 'a WebSocket agent from 127.0.0.2 is answered');
$w2->close;

$log = $t2->error_log;
like($log, qr/\[debug\] .*opamp agent \Q${\ uid_text($loud)}\E sequence 0 /,
     'debug_connection: the HTTP agent of that address is debugged');
like($log, qr/\[debug\] .*opamp agent \Q${\ uid_text($wloud)}\E sequence 0 /,
     'and the WebSocket agent of that address');
like($log, qr/\[debug\] .*opamp ws /, 'its WebSocket frames too');
unlike($log, qr/\Q${\ uid_text($quiet)}\E/,
       'the agent of another address is not');
$t2->done;

done_testing;
