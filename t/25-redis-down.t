#!/usr/bin/perl

# Redis goes away and comes back: HTTP agents get 503 with Retry-After,
# WebSocket agents UNAVAILABLE with RetryInfo and keep their connection;
# once Redis is back every agent is served again, and an agent whose
# report was lost is asked for its full state.  One error line per outage.

use strict;
use warnings;

use Test::More;
use FindBin;
use Time::HiRes qw(time);
use lib "$FindBin::Bin/lib";

use OpAMPTest;
use OpAMPFleet;

my $t = OpAMPTest->new;
$t->start_redis;
$t->start_nginx('', workers => 1, http => 'opamp_redis_timeout 1s;');

my $DESC = 'agent_description { identifying_attributes { key: '
           . '"service.name" value { string_value: "r" } } }';

sub msg {
    my ($uid, $text) = @_;
    return $t->a2s('instance_uid: "' . uid_escape($uid) . '" ' . $text);
}

my $uw = random_uid();
my $ws = OpAMPFleet->connect_ws(port => $t->port);
$ws->send_msg(msg($uw, "sequence_num: 0 capabilities: 1 $DESC"));
ok(defined $ws->recv_msg(5), 'a WebSocket agent is connected');

my $uh = random_uid();
my ($s, $h, $b) = $t->http_post(msg($uh, "sequence_num: 0 capabilities: 1 $DESC"));
is($s, 200, 'an HTTP agent is served');

$t->stop_redis;

($s, $h, $b) = $t->http_post(msg($uh, 'sequence_num: 1 capabilities: 1'));
is($s, 503, 'Redis down: HTTP 503');
is($h->{'retry-after'}, 30, 'with Retry-After');
like($t->s2a_text($b), qr/ServerErrorResponseType_Unavailable/,
     'and a ServerErrorResponse UNAVAILABLE');

$ws->send_msg(msg($uw, 'sequence_num: 1 capabilities: 1'));
my $r = $t->s2a_text($ws->recv_msg(5) // '');
like($r, qr/type: ServerErrorResponseType_Unavailable/,
     'Redis down: the WebSocket agent gets UNAVAILABLE');
like($r, qr/retry_info \{\s*retry_after_nanoseconds: 30000000000/,
     'with RetryInfo');

$ws->send_msg(msg($uw, 'sequence_num: 2 capabilities: 1'));
ok(defined $ws->recv_msg(5) && !$ws->{closed},
   'and keeps its connection');

$t->start_redis;    # same port, empty: the state is gone as well

ok($t->wait_for(sub {
       my ($st) = $t->http_post(msg($uh, 'sequence_num: 2 capabilities: 1'));
       $st == 200 }, 10),
   'Redis back: HTTP agents are served again within the backoff');

($s, $h, $b) = $t->http_post(msg($uh, 'sequence_num: 3 capabilities: 1'));
like($t->s2a_text($b), qr/^flags: 1$/m,
     'an agent whose state was lost is asked for its full state');

$ws->send_msg(msg($uw, 'sequence_num: 3 capabilities: 1'));
$r = $t->s2a_text($ws->recv_msg(5) // '');
unlike($r, qr/error_response/, 'the WebSocket agent is served again');
like($r, qr/^flags: 1$/m, 'and asked for its full state');

$ws->send_msg(msg($uw, "sequence_num: 4 capabilities: 1 $DESC"));
$ws->recv_msg(5);
is($t->agent($uw)->{sequence_num}, 4, 'its full state is stored');
$ws->close;

my $log = $t->error_log;
my $lost = () = $log =~ /\[error\].*redis command connection to .* (lost|failed)/g;
is($lost, 1, 'one error line for the outage of the command connection');
like($log, qr/\[notice\].*redis command connection to .* restored/,
     'and a notice when it is back');

# a Redis that hangs: commands time out after opamp_redis_timeout
my $pid = $t->{redis_pid};
kill 'STOP', $pid;
# the command is sent once our request is read, so the worker gives up
# no sooner than opamp_redis_timeout (1 s) after we sent it; and without
# a later answer, not much later
my $t0 = time;
($s, $h, $b) = $t->http_post(msg($uh, 'sequence_num: 4 capabilities: 1'));
my $took = time - $t0;
is($s, 503, 'a Redis that does not answer: 503');
cmp_ok($took, '>=', 0.995, sprintf('after opamp_redis_timeout (%.3f s), '
       . 'not sooner', $took));
cmp_ok($took, '<', 1.5, 'and not much later');
kill 'CONT', $pid;
ok($t->wait_for(sub {
       my ($st) = $t->http_post(msg($uh, 'sequence_num: 5 capabilities: 1'));
       $st == 200 }, 10),
   'served again once it answers');

$t->done;
done_testing;
