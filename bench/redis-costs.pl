#!/usr/bin/perl

# What the module costs Redis, for sizing a primary (docs/operations.md,
# "Sizing"): Redis CPU per WebSocket heartbeat (settled agents, in
# batches), per plain HTTP poll (agents owed nothing, then agents with a
# config offered that they never acknowledge, as loadgen's HTTP agents
# do) and per agent of a config fan-out to a new group, and Redis memory
# per agent, read from Redis's own INFO
# (used_cpu_sys + used_cpu_user, used_memory) around each phase.  The
# agents are bench/loadgen's (payload: see docs/operations.md).  Loopback
# only, bounded in agents and time.
#
#   perl bench/redis-costs.pl            # AGENTS=1000 SECONDS=10
#   CAPS=0x7d47 perl bench/redis-costs.pl   # the agents' capabilities: the
#                                        # OpAMP supervisor's set (default:
#                                        # loadgen's minimal agent, 0x2803)

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/../t/lib";
use Time::HiRes qw(time sleep);
use POSIX qw(WNOHANG);
use Test::More;

use OpAMPTest;

my $N = $ENV{AGENTS} // 1000;    # the harness: 1024 connections a worker
my @CAPS = $ENV{CAPS} ? ('--caps', $ENV{CAPS}) : ();
my $W = $ENV{SECONDS} // 10;
my $bench = $FindBin::Bin;

system("make -s -C $bench loadgen") == 0 or die "loadgen does not build\n";

my $t = OpAMPTest->new;
$t->start_redis;
$t->start_nginx('
        location /admin/ { opamp_admin; }', workers => 2);

sub cpu {
    my $i = $t->redis('INFO', 'cpu');
    my ($s) = $i =~ /used_cpu_sys:([\d.]+)/;
    my ($u) = $i =~ /used_cpu_user:([\d.]+)/;
    return $s + $u;
}

sub mem { return ($t->redis('INFO', 'memory') =~ /used_memory:(\d+)/)[0] }

sub hold {
    my ($heartbeat, $duration, $seed) = @_;
    my $pid = fork() // die;
    if ($pid == 0) {
        open STDOUT, '>', $t->dir . "/hold-$seed.out";
        exec "$bench/loadgen", '--mode', 'hold', '--port', $t->port,
            '--agents', $N, '--duration', $duration,
            '--heartbeat', $heartbeat, '--seed', $seed, @CAPS;
    }
    $t->wait_for(sub { ($t->redis('ZCARD', 'opamp:agents') // 0) >= $N }, 30)
        or die "the agents did not all report: "
               . ($t->redis('ZCARD', 'opamp:agents') // 0) . "\n";
    sleep 3;     # every agent settled, the connect burst over
    return $pid;
}

# heartbeats: every agent once a second, settled (owed nothing)

my $m0 = mem();
my $pid = hold(1, $W + 8, 1);
my $m1 = mem();
my ($c0, $t0) = (cpu(), time);
sleep $W;
my ($c1, $t1) = (cpu(), time);
my $beat_cpu = ($c1 - $c0) / (($t1 - $t0) * $N);
waitpid($pid, 0);
$t->redis('DEL', 'opamp:agents');

# HTTP polling, back to back, 50 agents: a run to make them known, then
# the run measured (the same agents, starting again from their full
# status); Redis CPU per poll answered, and polls per second
my $caps = join ' ', @CAPS;

sub polls {
    my $cmd = "$bench/loadgen --mode http --port ${\ $t->port} --agents 50 "
              . "--duration $W $caps";
    my $out = `$cmd`;
    my $c0 = cpu();
    $out = `$cmd`;
    my $c1 = cpu();
    my ($answered) = $out =~ /answered=(\d+)/;
    my ($rate) = $out =~ /rate=(\d+)/;
    return (($c1 - $c0) / ($answered || 1), $rate // 0);
}

# owed nothing: every poll but the first of each agent takes the short way
my ($poll_cpu, $rate) = polls();
$t->redis('DEL', 'opamp:agents');

# fan-out: agents that send nothing meanwhile; a new group matching all

$pid = hold(3600, $W + 8, 2);
my ($cb, $tb) = (cpu(), time);
sleep 2;
my $idle = (cpu() - $cb) / (time - $tb);
my ($c2, $t2) = (cpu(), time);
my ($s) = $t->http_post('{"selector":"service.name=bench","files":'
                        . '{"a.yaml":{"body":"x: 1\n"}}}', -method => 'PUT',
                        -path => '/admin/configs/groups/costs',
                        'Content-Type' => 'application/json');
die "PUT: $s\n" unless $s == 200 || $s == 201;
sleep 2;
my ($c3, $t3) = (cpu(), time);
my $fan_cpu = (($c3 - $c2) - $idle * ($t3 - $t2)) / $N;
waitpid($pid, 0);

# HTTP polling again, the group's config offered to the agents at their
# first poll and never acknowledged: out until opamp_agent_timeout
my ($offer_cpu, $offer_rate) = polls();

printf "caps=%s agents=%d redis_memory_per_agent=%.0fB "
       . "redis_cpu_per_heartbeat=%.1fus redis_cpu_per_fanout_agent=%.1fus "
       . "redis_cpu_per_http_poll=%.1fus (%d/s) "
       . "redis_cpu_per_http_poll_offer_out=%.1fus (%d/s)\n",
       $ENV{CAPS} // '0x2803', $N, ($m1 - $m0) / $N, $beat_cpu * 1e6,
       $fan_cpu * 1e6, $poll_cpu * 1e6, $rate, $offer_cpu * 1e6, $offer_rate;

$t->done;
done_testing;
