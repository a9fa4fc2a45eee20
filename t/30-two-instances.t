#!/usr/bin/perl

# Two nginx instances on one Redis: an agent that moves from one to the
# other keeps its state and is not asked for its full state again; a
# takeover on the other instance closes the old connection through Redis
# pub/sub.

use strict;
use warnings;

use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use IO::Select;

use OpAMPTest;
use OpAMPFleet;

my $ta = OpAMPTest->new;
$ta->start_redis;
my $tb = OpAMPTest->new(redis_port => $ta->redis_port);
$ta->start_nginx('', workers => 1, http => 'opamp_server_id host-a;');
$tb->start_nginx('', workers => 1, http => 'opamp_server_id host-b;');

my $DESC = 'agent_description { identifying_attributes { key: '
           . '"service.name" value { string_value: "roamer" } } }';

sub msg {
    my ($uid, $text) = @_;
    return $ta->a2s('instance_uid: "' . uid_escape($uid) . '" ' . $text);
}

my $u = random_uid();
my $a = OpAMPFleet->connect_ws(port => $ta->port);
for my $seq (0 .. 2) {
    $a->send_msg(msg($u, "sequence_num: $seq capabilities: 1"
                     . ($seq == 0 ? " $DESC" : '')));
    $a->recv_msg(5);
}
my $st = $ta->agent($u);
is($st->{server_id}, 'host-a', 'held by instance a');
$a->close;
ok($ta->wait_for(sub { ($ta->agent($u)->{connected} // '') eq '0' }, 5),
   'disconnected after closing');
# the worker answered the last heartbeat itself (opamp_heartbeat_recheck)
# and stored it when the connection ended
is($ta->agent($u)->{sequence_num}, 2, 'at sequence 2');

my $b = OpAMPFleet->connect_ws(port => $tb->port);
$b->send_msg(msg($u, 'sequence_num: 3 capabilities: 1'));
my $r = $tb->s2a_text($b->recv_msg(5) // '');
unlike($r, qr/^flags:/m, 'reconnected to instance b with sequence 3: no '
       . 'full state asked');
$st = $ta->agent($u);
is($st->{server_id}, 'host-b', 'now held by instance b');
is($st->{worker_pid}, ($tb->worker_pids)[0], 'by b\'s worker');
like($st->{channel}, qr/^opamp:worker:host-b:\d+$/, 'b\'s channel');
like($ta->decode('AgentDescription', $st->{description}), qr/roamer/,
     'description intact');
is($st->{connected}, 1, 'connected');

# takeover across instances: b holds it, a new connection on a continues
my $a2 = OpAMPFleet->connect_ws(port => $ta->port);
$a2->send_msg(msg($u, 'sequence_num: 4 capabilities: 1'));
$r = $a2->recv_msg(5);
ok(defined $r && $ta->s2a_text($r) !~ /error_response|agent_identification/,
   'a takeover connection on instance a is served');
ok(!defined $b->recv_msg(5), 'the old connection on b ends');
is($b->{closed}, 1008, 'closed with 1008 through Redis pub/sub');
is($ta->agent($u)->{server_id}, 'host-a', 'instance a holds the agent');
$a2->close;

$tb->done;
$ta->done;
done_testing;
