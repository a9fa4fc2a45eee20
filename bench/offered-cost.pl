#!/usr/bin/perl

# What src/lua/offered.lua costs Redis per agent, alone: the bookkeeping
# a worker writes after a fleet change (docs/redis-schema.md, <prefix>fleet,
# step 3), on agent hashes of the fields a supervisor agent has after a
# config was applied (22 fields, a listpack), 256 agents a call as the
# worker sends them.  Two kinds of decision: an agent sent a config ("oc")
# and an agent owed nothing new whose settled mark moves (""), each in
# rounds of a new config_version; Redis CPU from INFO commandstats (the
# script's own microseconds, its commands included), the first round
# left out.  A script of the same calling convention may be given to
# compare (its lib/ includes are expanded from its own directory).
#
#   perl bench/offered-cost.pl [script.lua]     # AGENTS=1024 ROUNDS=8

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/../t/lib";

use OpAMPTest;

my $script = shift // "$FindBin::Bin/../src/lua/offered.lua";
my $N = $ENV{AGENTS} // 1024;
my $R = $ENV{ROUNDS} // 8;
my $B = 256;

my $t = OpAMPTest->new;
$t->start_redis;
my $text = `sh $FindBin::Bin/../src/lua/expand.sh $script`;
die "cannot expand $script\n" if $?;
my $sha = $t->redis('SCRIPT', 'LOAD', $text);

my @uids = map { sprintf '%08x-0000-7000-8000-%012x', $_, $_ } 1 .. $N;
my $h0 = 'a' x 64;
my $ms = 1796658006990;

sub fleet {
    $t->redis('FLUSHALL');
    for my $i (0 .. $N - 1) {
        $t->redis('HSET', "opamp:agent:{$uids[$i]}", schema => 3,
                  sequence_num => 5, capabilities => 32071, healthy => 1,
                  available_components_ref => 'ab' x 16,
                  first_seen_ms => $ms, last_seen_ms => $ms,
                  expires_ms => $ms + 90000, connected => 1,
                  transport => 'websocket', conn => "vm:11862:$i",
                  server_id => 'vm', worker_pid => 11862,
                  channel => 'opamp:worker:vm:11862',
                  connected_at_ms => $ms, config_version => 1,
                  desired_config => 'group:g1', desired_hash => $h0,
                  offered_hash => $h0, offered_ms => $ms, gauge => 'w1Arg1',
                  settled => '1 0123456789abcdef', config_status => 'APPLIED',
                  config_hash => $h0);
    }
    $t->redis('HSET', 'opamp:fleet:gauges', agents => $N, 'group:g1' => $N);
}

sub usec {
    my $i = $t->redis('INFO', 'commandstats');
    my ($us) = $i =~ /cmdstat_evalsha:calls=\d+,usec=(\d+)/;
    return $us // 0;
}

for my $what ('oc', '') {
    fleet();
    my $spent = 0;
    for my $r (1 .. $R) {
        my $v = $r + 1;
        my $kind = $what eq 'oc'
                   ? [ '', 'group:g1', sprintf('%064x', $r), 'oc' ]
                   : [ $v - 1, 'group:g1', $h0, '' ];
        my $u0 = usec();
        for (my $i = 0; $i < $N; $i += $B) {
            my @a = map { ($uids[$_], $_, 1) } $i .. $i + $B - 1;
            my $n = $t->redis('EVALSHA', $sha, 1, 'opamp:fleet:gauges',
                              $ms + $r, 'opamp:', $v, 'vm:11862:', 1,
                              @$kind, @a);
            die "round $r: $n agents written of $B\n" unless $n == $B;
        }
        $spent += usec() - $u0 if $r > 1;
    }
    printf "%s: %.2f us of Redis per agent (%d agents, rounds 2-%d)\n",
        $what eq 'oc' ? 'sent a config' : 'owed nothing new, mark moved',
        $spent / ($N * ($R - 1)), $N, $R;
}
