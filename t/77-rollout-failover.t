#!/usr/bin/perl

# A staged rollout across a Redis Sentinel failover (docs/admin-api.md,
# "Staged rollouts": no leader to lose): two nginx instances reach Redis
# through three Sentinels, a fleet of simulated agents (t/lib/OpAMPAgents.pm,
# 1,000 unless TEST_ROLLOUT_AGENTS says otherwise) runs version 1 of a group,
# a rollout of version 2 starts, and in its second stage the primary is
# killed.  The replica is promoted, the workers follow it, and the rollout
# goes on from where it was; then one nginx is stopped for good, its
# agents go to the other, and that one's workers go on stepping: the
# rollout ends done, its stages in rank order with the soak times kept,
# and every agent runs version 2.

use strict;
use warnings;

use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use JSON::PP;
use POSIX qw(ceil);
use Time::HiRes qw(time sleep);

use OpAMPTest;
use OpAMPRedisHA;
use OpAMPFleet;
use OpAMPAgents;

my $N = $ENV{TEST_ROLLOUT_AGENTS} // 1000;
my $SPASS = 'sentinel-secret';

my $p1 = OpAMPTest::free_port();

my $t = OpAMPTest->new(redis_port => $p1);
my $ha = OpAMPRedisHA->new($t);

# a primary, a replica and three Sentinels
my $set = $ha->sentinel_set(pass => $SPASS);
my ($primary, $replica, $p2) = @$set{qw(primary replica replica_port)};
my @sp = @{ $set->{sentinel_ports} };

my %conf = (
    workers => 2,
    redis => $set->{url},
    http => "opamp_redis_sentinel_auth $SPASS;\n"
            . "    opamp_redis_timeout 4s;",
);
my $ADMIN = '
        location /admin/ { opamp_admin; }';

$t->start_nginx($ADMIN, %conf);
my $t2 = OpAMPTest->new(redis_port => $p1);
$t2->start_nginx($ADMIN, %conf);

my $json = JSON::PP->new->canonical;

sub api {
    my ($method, $path, $body) = @_;
    my ($st, undef, $b) = $t->http_post($body // '', -method => $method,
                                        -path => "/admin/$path",
                                        'Content-Type' => 'application/json');
    return ($st, eval { decode_json($b // '') } // {});
}

sub hash_of { OpAMPFleet::config_hash('c.yaml' => [ $_[0], '' ]) }

sub group_body {
    my ($body, $plan) = @_;
    my %b = (selector => 'service.name=web',
             files => { 'c.yaml' => { body => $body } });
    $b{rollout} = $plan if $plan;
    return $json->encode(\%b);
}

sub rollout { (api('GET', 'rollouts/web'))[1] }

my $fleet = OpAMPAgents->new(t => $t, hello => 'capabilities: 3 '
    . 'agent_description { identifying_attributes { key: "service.name" '
    . 'value { string_value: "web" } } }');

my $hA = hash_of('A');
my ($st) = api('PUT', 'configs/groups/web', group_body('A'));
is($st, 200, 'group web, version 1');
$fleet->add($_ % 2 ? $t : $t2) for 1 .. $N;
ok($fleet->pump(120, $fleet->all_run($hA)),
   "$N agents on two nginx run version 1");

# --- a rollout, and the primary killed in its second stage --------------------

my $hB = hash_of('B');
# the last stage soaks long enough for every agent to report under it,
# however long the failover and the host's end kept the agents waiting
# (the rollout's counts are frozen when it ends)
my $plan = { stages => [ 10, '50%', '100%' ], soak_s => [ 3, 3, 20 ],
             gates => { failed => 0 }, on_gate => 'rollback' };
($st) = api('PUT', 'configs/groups/web', group_body('B', $plan));
is($st, 200, 'a staged rollout of version 2 starts');
ok($fleet->pump(60, sub { (rollout()->{stage} // 0) >= 2 }),
   'it reaches its second stage');

# the replica has every write before the primary goes: writes paused
# (the workers' calls wait), the replica caught up, then the kill; an
# APPLIED report stored on the primary alone and answered would be lost
# with it, and its agent would never send it again
ok($t->replicas_caught_up(pause => 30000),
   'the replica has every write of the primary');
$ha->signal($primary, 'KILL');
$ha->reap($primary);

ok($t->wait_for(sub {
       my $r = eval { $ha->cmd($sp[0], 'SENTINEL', 'get-master-addr-by-name',
                               'opamp', auth => $SPASS) } // [];
       ($r->[1] // 0) == $p2 }, 30),
   'the Sentinels promote the replica');

# the harness looks at the new primary from now on
$_->{redis_port} = $p2, delete $_->{rconn} for $t, $t2;

ok($t->wait_for(sub { $t->workers_ready(2) && $t2->workers_ready(2) }, 30),
   'every worker of both nginx instances is connected to the new primary');

# and a host goes away for good: its agents connect to the other, whose
# workers go on stepping the rollout
is(rollout()->{state}, 'running', 'the rollout is still running');
$fleet->{fallback} = $t;
$t2->stop_nginx;
# (the agents see nginx b's end only as the pump reads their sockets: it
# goes on until they have, even when the rollout ended meanwhile)
ok($fleet->pump(120, sub {
       (rollout()->{state} // '') eq 'done'
           && !grep { $_->{t} == $t2 } @{ $fleet->agents } }),
   'with nginx b gone, nginx a\'s workers step it on: done');
is(scalar(grep { $_->{t} == $t2 } @{ $fleet->agents }), 0,
   'nginx b\'s agents connected to nginx a');
ok($fleet->pump(60, $fleet->all_run($hB)), 'every agent runs version 2')
    or $fleet->laggards($hB);

my $r = rollout();
is($r->{stage}, 3, 'after its three stages');
is($r->{counts}{reached}, $N, 'having reached every agent');
is($r->{counts}{failed}, 0, 'none of which failed it');
(undef, my $g) = api('GET', 'configs/groups/web');
is($g->{config_hash}, $hB, 'the group has version 2');

my @bound = (10, ceil($N / 2), $N);
my ($first, $last) = $fleet->stage_times($hB, \@bound);
is(scalar(grep { OpAMPAgents::received($_, $hB) } @{ $fleet->agents }), $N,
   'every agent received version 2');
# (an agent of a stage may get it late, its delivery cut by the failover
# or its nginx's end and made at its next connection: what must hold is
# that no agent got it before its stage began, the soak time after the
# stage before)
for my $k (1 .. 2) {
    cmp_ok($first->[$k] - $first->[$k - 1], '>=', 3 - 0.25,
           'stage ' . ($k + 1) . ' began after the soak time of stage '
           . $k);
}

$t2->done;
$t->done;
done_testing;
