#!/usr/bin/perl

# opamp_heartbeat_batch_delay: a WebSocket heartbeat that may take the
# short way waits up to the delay for others, so that heartbeats spread
# over time reach Redis in one beats.lua call instead of one call each.
# A plain HTTP poll, whose agent waits for the answer before it polls
# again, never waits for the delay, and takes the waiting heartbeats with
# it.  The delay here is the longest allowed (a second), so that no
# verdict depends on how fast this machine is: a heartbeat cannot be
# answered before the delay, and ten polls that each waited for it could
# not end in under ten seconds.

use strict;
use warnings;

use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use Time::HiRes qw(time sleep);

use OpAMPTest;
use OpAMPFleet;

my $DELAY = 1.0;

my $t = OpAMPTest->new;
$t->start_redis;
# every heartbeat goes to Redis (t/13 tests those a worker answers itself)
$t->start_nginx('', workers => 1,
                http => 'opamp_heartbeat_batch_delay 1000ms;'
                        . ' opamp_heartbeat_recheck 0;');

# ReportsStatus, AcceptsRemoteConfig
my $full = OpAMPFleet::template(
    'sequence_num: 0 capabilities: 3 agent_description { '
    . 'identifying_attributes { key: "service.name" '
    . 'value { string_value: "delay" } } }');

sub beat_msg {
    my ($ag) = @_;
    return OpAMPFleet::encode('AgentToServer',
        'instance_uid: "' . OpAMPFleet::uid_escape($ag->{uid})
        . "\" sequence_num: $ag->{seq} capabilities: 3");
}

# beats.lua calls so far, from Redis's slow log (OpAMPTest::beats_calls):
# the other scripts (the staged rollouts' timer calls one every second)
# do not count
$t->slowlog_all;
sub beats_calls { return $t->beats_calls }

# an answer that carries nothing: no flags, config, command or error
sub owed_nothing {
    my ($m) = @_;
    return 0 unless defined $m;
    return OpAMPFleet::decode('ServerToAgent', $m)
           !~ /flags|remote_config|command|error_response/;
}

sub stored_seq {
    my ($ag) = @_;
    return $t->redis('HGET', 'opamp:agent:{'
                     . OpAMPFleet::uid_text($ag->{uid}) . '}',
                     'sequence_num') // '';
}

my @agents;
for my $i (1 .. 6) {
    my $ag = OpAMPFleet->connect_ws(port => $t->port);
    $ag->{uid} = OpAMPFleet::random_uid();
    $ag->{seq} = 0;
    $ag->send_msg(OpAMPFleet::with_uid($full, $ag->{uid}));
    defined $ag->recv_msg(5) or die "agent $i not answered\n";
    $ag->{beat} = beat_msg({ %$ag, seq => 1 });  # protoc takes a while
    push @agents, $ag;
}

# --- heartbeats spread over time go together ------------------------------

# six heartbeats, 50 ms apart: all within the delay of the first
my $calls = beats_calls();
my $sent = time;
for my $ag (@agents) {
    $ag->{seq} = 1;
    $ag->send_msg($ag->{beat});
    sleep 0.05;
}
my $first = $agents[0]->recv_msg(10);
my $waited = time - $sent;
ok(owed_nothing($first), 'the first heartbeat is answered, owed nothing');
ok($waited >= $DELAY - 0.05,
   sprintf('its answer waited for the batch delay (%.2f s)', $waited));
my $empty = grep { owed_nothing($_->recv_msg(10)) } @agents[1 .. $#agents];
is($empty, 5, 'the other five are answered, owed nothing');
my $used = beats_calls() - $calls;
ok($used <= 2, "the six heartbeats spread over 250 ms took $used script "
   . 'calls');
is(scalar(grep { stored_seq($_) ne '1' } @agents), 0,
   'Redis holds every agent\'s new sequence_num');

# --- enough heartbeats for a good batch do not wait -------------------------

# sixteen at once (the worker's threshold): they go without waiting for
# the delay, so that an agent that waits for each answer before it sends
# again is not held a second a message
my @more;
for my $i (1 .. 10) {
    my $ag = OpAMPFleet->connect_ws(port => $t->port);
    $ag->{uid} = OpAMPFleet::random_uid();
    $ag->{seq} = 0;
    $ag->send_msg(OpAMPFleet::with_uid($full, $ag->{uid}));
    defined $ag->recv_msg(5) or die "agent $i not answered\n";
    push @more, $ag;
}
my @sixteen = (@agents, @more);
for my $ag (@sixteen) {
    $ag->{seq}++;
    $ag->{beat} = beat_msg($ag);
}
$calls = beats_calls();
$sent = time;
$_->send_msg($_->{beat}) for @sixteen;
$empty = grep { owed_nothing($_->recv_msg(10)) } @sixteen;
$waited = time - $sent;
is($empty, 16, 'sixteen heartbeats at once are answered, owed nothing');
ok($waited < $DELAY - 0.1,
   sprintf('without waiting for the delay (%.2f s)', $waited));
ok(beats_calls() - $calls <= 2, 'in at most two script calls');
$_->close for @more;

# --- a plain HTTP poll does not wait, and takes the heartbeats along ------

my $uid = OpAMPFleet::random_uid();
my $seq = 0;
sub poll {
    my ($extra) = @_;
    my ($st, undef, $body) = $t->http_post(OpAMPFleet::encode(
        'AgentToServer', 'instance_uid: "' . OpAMPFleet::uid_escape($uid)
        . '" sequence_num: ' . $seq++ . ' capabilities: 3 '
        . ($extra // '')));
    return $st == 200 && owed_nothing($body);
}
poll('agent_description { identifying_attributes { key: "service.name" '
     . 'value { string_value: "delay" } } }');

my $polled = time;
my @polls = map { poll() } 1 .. 10;
$polled = time - $polled;
is(scalar(grep { $_ } @polls), 10, 'ten polls answered, owed nothing');

# a heartbeat waits; a poll comes 200 ms later and both go at once
my $ag = $agents[0];
$ag->{seq}++;
my $beat = beat_msg($ag);
my $poll_msg = OpAMPFleet::encode('AgentToServer',
    'instance_uid: "' . OpAMPFleet::uid_escape($uid) . '" sequence_num: '
    . $seq++ . ' capabilities: 3');
$calls = beats_calls();
$ag->send_msg($beat);
sleep 0.2;
my ($st, undef, $body) = $t->http_post($poll_msg);
is($st, 200, 'a poll while a heartbeat waits is answered');
my $answer = $ag->recv_msg(10);
ok(owed_nothing($answer), 'the waiting heartbeat is answered');
is(beats_calls() - $calls, 1,
   'the heartbeat and the poll went in one script call');
is(stored_seq($ag), $ag->{seq}, 'the heartbeat\'s sequence_num is stored');

# the poll timings last: a loaded machine may slow them, but no machine
# makes ten polls that waited a second each end in under ten
ok($polled < 10 * $DELAY,
   sprintf('ten polls in a row took %.2f s: none waited for the delay',
           $polled));

$_->close for @agents;

$t->done;
done_testing;
