#!/usr/bin/perl

# Heartbeats a worker receives in one turn of its event loop go to Redis in
# one call of the beats script (src/lua/beats.lua).  Every agent must still get its
# own answer: settled agents nothing, an agent in the same batch that is
# owed a config its offer, an agent out of sequence the full-state flag;
# Redis must hold each agent's sequence and liveness; a script cache
# flushed under the batch, an agent leaving while its heartbeat waits for
# the batch, and Redis going away must not lose an answer or the worker.

use strict;
use warnings;

use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use IO::Select;
use Time::HiRes qw(time);

use OpAMPTest;
use OpAMPFleet;

my $N = 200;
my $P = 'opamp:';

my $t = OpAMPTest->new;
$t->start_redis;
# Redis is stopped (SIGSTOP) for as long as a wave of heartbeats takes to
# arrive, however slow the machine: its timeout must not end that first
$t->start_nginx('
        location /admin/ { opamp_admin; }', workers => 1,
        http => 'opamp_redis_timeout 60s;'
                # every heartbeat goes to Redis (t/13 tests those a
                # worker answers itself)
                . ' opamp_heartbeat_recheck 0;');

# ReportsStatus, AcceptsRemoteConfig
my $full = OpAMPFleet::template(
    'sequence_num: 0 capabilities: 3 agent_description { '
    . 'identifying_attributes { key: "service.name" '
    . 'value { string_value: "beat" } } }');

sub beat_msg {
    my ($ag) = @_;
    return OpAMPFleet::encode('AgentToServer',
        'instance_uid: "' . OpAMPFleet::uid_escape($ag->{uid})
        . "\" sequence_num: $ag->{seq} capabilities: 3");
}

sub key_of { $P . 'agent:{' . OpAMPFleet::uid_text($_[0]{uid}) . '}' }

my (@agents, %by_sock);
for my $i (1 .. $N) {
    my $ag = OpAMPFleet->connect_ws(port => $t->port);
    $ag->{uid} = OpAMPFleet::random_uid();
    $ag->{seq} = 0;
    $ag->send_msg(OpAMPFleet::with_uid($full, $ag->{uid}));
    defined $ag->recv_msg(5) or die "agent $i not answered\n";
    push @agents, $ag;
    $by_sock{ fileno $ag->sock } = $ag;
}
is(scalar(grep { ($t->redis('HGET', key_of($_), 'settled') // '') ne '' }
                @agents), $N, "all $N agents settled after their full report");

# every agent sends a heartbeat at once, while the worker is stopped, so
# that it finds them all in one turn of its event loop; returns how many
# were not answered
my ($worker) = $t->worker_pids;

sub beat_all {
    my (%o) = @_;
    kill 'STOP', $worker;
    for my $ag (@agents) {
        $ag->{seq} += ($o{skip} && $o{skip} == $ag) ? 2 : 1;
        $ag->{answer} = undef;
        syswrite($ag->sock, OpAMPFleet::frame(2, "\x00" . beat_msg($ag)));
        $o{after}->($ag) if $o{after};
    }
    kill 'CONT', $worker;
    my $sel = IO::Select->new(map { $_->sock } grep { !$_->{gone} } @agents);
    my $left = grep { !$_->{gone} } @agents;
    my $deadline = time + 20;
    while ($left > 0 && time < $deadline) {
        for my $s ($sel->can_read(1)) {
            my $ag = $by_sock{ fileno $s };
            $ag->feed or next;
            for my $m ($ag->drain) {
                next if defined $ag->{answer};
                $ag->{answer} = OpAMPFleet::decode('ServerToAgent', $m);
                $left--;
            }
        }
    }
    return $left;
}

# beats.lua calls so far, from Redis's slow log (OpAMPTest::beats_calls):
# the other scripts (the staged rollouts' timer calls one every second)
# do not count
$t->slowlog_all;
sub beats_calls { return $t->beats_calls }

# --- settled agents: one call for many ------------------------------------

my $calls = beats_calls();
my $before = $t->redis('HGET', key_of($agents[0]), 'last_seen_ms');
select undef, undef, undef, 0.01;
is(beat_all(), 0, 'every heartbeat is answered');
my $used = beats_calls() - $calls;
ok($used <= 4, "the $N heartbeats took $used script calls: batched");
is(scalar(grep { $_->{answer} =~ /flags|remote_config|error_response/ }
                @agents), 0, 'and every answer is empty');
is(scalar(grep { $t->redis('HGET', key_of($_), 'sequence_num') ne $_->{seq} }
                @agents), 0, 'Redis holds every agent\'s new sequence_num');
ok($t->redis('HGET', key_of($agents[0]), 'last_seen_ms') > $before,
   'and its liveness');
is($t->redis('ZSCORE', "${P}agents",
             OpAMPFleet::uid_text($agents[-1]{uid})),
   $t->redis('HGET', key_of($agents[-1]), 'last_seen_ms'),
   'the fleet index has the new last_seen_ms');

# --- agents in the same batch that need the long way --------------------------

# one agent is owed its own config, one skips a sequence number
my ($owed, $gap) = @agents[50, 120];
my ($st) = $t->http_post('{"files":{"c.yaml":{"body":"own"}}}',
    -method => 'PUT',
    -path => '/admin/configs/agents/' . OpAMPFleet::uid_text($owed->{uid}),
    'Content-Type' => 'application/json');
is($st, 200, 'an agent config is set');
# the push of the new config reaches it first
my $pushed = $owed->recv_msg(5);
like(OpAMPFleet::decode('ServerToAgent', $pushed // ''), qr/remote_config/,
     'and pushed to its agent');

is(beat_all(skip => $gap), 0, 'every heartbeat of the mixed batch answered');
like($gap->{answer}, qr/^flags: 1\b/m,
     'the agent out of sequence is asked for its full state');
unlike($owed->{answer}, qr/flags: 1\b/,
       'the agent owed a config is in sequence');
is(scalar(grep { $_ != $gap && $_->{answer} =~ /flags/ } @agents), 0,
   'no other agent is asked for anything');
is($t->redis('HGET', key_of($gap), 'settled'), undef,
   'the agent out of sequence is no longer settled');
is($t->redis('HGET', key_of($owed), 'sequence_num'), $owed->{seq},
   'the one owed a config has its sequence stored the long way');

# the gap agent reports in full and is settled again
$gap->{seq} = 0;
$gap->send_msg(OpAMPFleet::with_uid($full, $gap->{uid}));
defined $gap->recv_msg(5) or die "no answer\n";
# (its next heartbeat continues from 0)

# --- the script cache flushed under a batch ---------------------------------

$t->redis('SCRIPT', 'FLUSH');
is(beat_all(), 0, 'after SCRIPT FLUSH every heartbeat is still answered');
is(scalar(grep { $_->{answer} =~ /error_response/ } @agents), 0,
   'none with an error');
is(scalar(grep { $t->redis('HGET', key_of($_), 'sequence_num') ne $_->{seq} }
                @agents), 0, 'and every sequence_num stored');

# --- agents that leave right after their heartbeat ----------------------------

# the heartbeat and a close frame arrive together: the session goes away
# while its heartbeat waits for the batch
is(beat_all(after => sub {
        my ($ag) = @_;
        return unless $ag->{uid} =~ /^[\x00-\x3f]/;
        syswrite($ag->sock, OpAMPFleet::frame(8, pack('n', 1000)));
        $ag->{gone} = 1;
    }), 0, 'the agents that stay are answered');
my @gone = grep { $_->{gone} } @agents;
ok(@gone > 10, scalar(@gone) . ' agents left with a heartbeat in flight');
@agents = grep { !$_->{gone} } @agents;
ok($t->wait_for(sub {
        !grep { ($t->redis('HGET', key_of($_), 'connected') // '') ne '0' }
              @gone }, 5),
   'those that left are marked disconnected')
    or diag(explain($t->agent($gone[0]{uid})));

# --- heartbeats that come while a batch is out wait for its answer ---------

# Redis holds the first call (stopped with SIGSTOP: the call is written,
# not answered); the heartbeats that arrive meanwhile, each in a turn of
# its own, go together in the next call once it answers.  Redis goes on
# only once nginx has read every heartbeat (nothing left in the receive
# queues of its sockets), so that the verdict does not depend on how fast
# this machine sends the wave.
my $port_hex = sprintf '%04X', $t->port;

sub unread_by_nginx {
    my $n = 0;
    open my $f, '<', '/proc/net/tcp' or return -1;
    while (<$f>) {
        my @f = split;
        next unless ($f[1] // '') =~ /:$port_hex$/ && $f[3] eq '01';
        my (undef, $rx) = split /:/, $f[4];
        $n += hex $rx;
    }
    return $n;
}

my @wave = @agents[0 .. 79];
my %beat;
for my $ag (@wave) {
    $ag->{seq}++;
    $beat{$ag} = beat_msg($ag);    # encoded before: protoc takes a while
}
$calls = beats_calls();
kill 'STOP', $t->{redis_pid};
for my $ag (@wave) {
    $ag->send_msg($beat{$ag});
    select undef, undef, undef, 0.005;
}
ok($t->wait_for(sub { unread_by_nginx() == 0 }, 30),
   'nginx read the whole wave while Redis was stopped');
kill 'CONT', $t->{redis_pid};
my $answered = grep {
        OpAMPFleet::decode('ServerToAgent', $_->recv_msg(10) // '')
        !~ /flags|error_response/
    } @wave;
is($answered, scalar @wave, 'each heartbeat of the wave answered, empty');
$used = beats_calls() - $calls;
ok($used <= 3, "the wave took $used script calls: those that came while "
   . 'one was out went together');
is(scalar(grep { $t->redis('HGET', key_of($_), 'sequence_num') ne $_->{seq} }
                @wave), 0, 'every sequence_num of the wave stored');

# --- Redis goes away ------------------------------------------------------------

$t->stop_redis;
for my $ag (@agents[0 .. 19]) {
    $ag->{seq}++;
    $ag->send_msg(beat_msg($ag));
}
my $unavailable = 0;
for my $ag (@agents[0 .. 19]) {
    my $m = $ag->recv_msg(10);
    $unavailable++ if OpAMPFleet::decode('ServerToAgent', $m // '')
                      =~ /error_response \{\s*type: ServerErrorResponseType_Unavailable/;
}
is($unavailable, 20, 'with Redis down every heartbeat is answered '
   . 'UNAVAILABLE');

$_->close for @agents;

$t->done;
done_testing;
