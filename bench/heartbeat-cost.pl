#!/usr/bin/perl

# Where a heartbeat's Redis time goes (docs/performance.md, "Where a
# heartbeat's Redis time goes"): AGENTS bench/loadgen agents with the
# OpAMP supervisor's capabilities (0x7d47, a component list), owed their
# group's config and settled, heartbeat every HEARTBEAT seconds, spread
# over the interval, on 2 nginx workers.  Once Redis's CPU is steady,
# SECONDS of heartbeats alone: Redis CPU per heartbeat (INFO cpu, Redis's
# idle CPU taken off), and per heartbeat what INFO commandstats counts
# (beats.lua's own microseconds, its commands inside).  Then the agents
# are stopped (SIGSTOP: their connections stay, nothing is sent) and
# beats.lua is replayed by hand on the same agent hashes, 16 agents a
# call, back to back: the same work on the same data with Redis's caches
# warm, which tells the per-agent cost from what the live traffic adds;
# once as full checks, once as the workers' lease renewals.
# Loopback only, bounded in agents and time.
#
#   perl bench/heartbeat-cost.pl      # AGENTS=20000 HEARTBEAT=30 SECONDS=60
#   BATCH_DELAY=0 perl bench/heartbeat-cost.pl   # opamp_heartbeat_batch_delay
#   RECHECK=0 perl bench/heartbeat-cost.pl       # opamp_heartbeat_recheck:
#                                    # 0, every heartbeat goes to Redis
#   PAYLOAD=collector perl bench/heartbeat-cost.pl  # a Collector's
#                                    # 39.8 KB full status (bench/collector.pl)
#   AGENT_TIMEOUT=5m perl bench/heartbeat-cost.pl   # opamp_agent_timeout
#                                    # (a worker answers for half of it)

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/../t/lib";
use Time::HiRes qw(time sleep);
use Test::More;

use OpAMPTest;

my $N = $ENV{AGENTS} // 20000;
my $H = $ENV{HEARTBEAT} // 30;
# two intervals by default: the agents connect together, so with the
# workers answering every other heartbeat of an agent (the defaults) the
# fleet alternates in step, and one interval would see only one half
my $W = $ENV{SECONDS} // 2 * $H;
my $bench = $FindBin::Bin;
my $top = "$FindBin::Bin/..";
my $P = 'opamp:';

# loadgen holds at most about 9,000 agents a process (its descriptors)
my $procs = int(($N + 8999) / 9000);

system("make -s -C $bench loadgen") == 0 or die "loadgen does not build\n";

my $delay = defined $ENV{BATCH_DELAY}
            ? "opamp_heartbeat_batch_delay $ENV{BATCH_DELAY};" : '';
$delay .= " opamp_heartbeat_recheck $ENV{RECHECK};" if defined $ENV{RECHECK};
$delay .= " opamp_agent_timeout $ENV{AGENT_TIMEOUT};"
    if defined $ENV{AGENT_TIMEOUT};
my $t = OpAMPTest->new;
$t->start_redis;
$t->start_nginx('
        location /admin/ { opamp_admin; }
        location = /metrics { opamp_metrics; }', workers => 2,
        connections => int($N / 2) + 2000, http => $delay);

# heartbeats the workers answered without Redis
sub in_worker {
    my (undef, undef, $b) = $t->http_post('', -method => 'GET',
                                          -path => '/metrics');
    return $b =~ /^opamp_heartbeats_in_worker_total (\d+)$/m ? $1 : 0;
}

sub cpu {
    my $i = $t->redis('INFO', 'cpu');
    my ($s) = $i =~ /used_cpu_sys:([\d.]+)/;
    my ($u) = $i =~ /used_cpu_user:([\d.]+)/;
    return $s + $u;
}

sub commandstats {
    my %c;
    my $i = $t->redis('INFO', 'commandstats');
    $c{$1} = [ $2, $3 ] while $i =~ /cmdstat_(\w+):calls=(\d+),usec=(\d+)/g;
    return \%c;
}

my $c0 = cpu();
sleep 3;
my $idle = (cpu() - $c0) / 3;

# PAYLOAD=collector: a Collector's full status (bench/collector.pl, 3
# builds x 2 configs; 39.8 KB) instead of loadgen's small description
my @full;
my $selector = 'service.name=bench';
if (($ENV{PAYLOAD} // '') eq 'collector') {
    my $files = `perl $bench/collector.pl ${\ $t->dir}/collector 3 2`;
    chomp $files;
    die "bench/collector.pl failed\n" unless $? == 0 && $files ne '';
    @full = ('--full', $files);
    $selector = 'service.name=otelcol-contrib';
}

my ($st) = $t->http_post('{"selector":"' . $selector . '","files":'
                         . '{"c.yaml":{"body":"x: 1\n"}}}', -method => 'PUT',
                         -path => '/admin/configs/groups/bench',
                         'Content-Type' => 'application/json');
die "PUT: $st\n" unless $st == 200 || $st == 201;

my @pids;
for my $i (1 .. $procs) {
    my $pid = fork() // die;
    if ($pid == 0) {
        open STDOUT, '>', $t->dir . "/loadgen-$i.out";
        exec "$bench/loadgen", '--mode', 'fanout', '--port', $t->port,
            '--agents', int($N / $procs), '--duration', $W + 120,
            '--heartbeat', $H, '--seed', $i, '--src-base', 10 * $i,
            '--go-file', $t->dir . '/never', '--caps', '0x7d47',
            '--ack-delay', 2, @full;
    }
    push @pids, $pid;
}
my $n = int($N / $procs) * $procs;
$t->wait_for(sub { ($t->redis('ZCARD', "${P}agents") // 0) >= $n }, 120)
    or die "the agents did not all report\n";

# steady: the connect burst and the APPLIED reports over
my $prev = cpu();
for (1 .. 30) {
    sleep 2;
    my $c = cpu();
    last if abs(($c - $prev) / 2 - $idle) < 0.02 + $n / $H * 40e-6;
    $prev = $c;
}

# each agent's first heartbeat after its APPLIED report goes to Redis,
# which settles it; the workers answer from the next one on
# (opamp_heartbeat_recheck): two intervals more before measuring
sleep 2 * $H unless ($ENV{RECHECK} // '') eq '0';

my ($s0, $t0, $w0) = (commandstats(), time, in_worker());
$c0 = cpu();
sleep $W;
my $c1 = cpu();
my ($s1, $t1, $w1) = (commandstats(), time, in_worker());
my $shorts = ($s1->{hset}[0] // 0) - ($s0->{hset}[0] // 0);
my $beats = $n * ($t1 - $t0) / $H;

printf "agents=%d payload=%s heartbeat=%ds batch_delay=%s recheck=%s "
       . "agent_timeout=%s redis_cpu_per_heartbeat=%.1fus "
       . "short_way_in_redis=%d in_worker=%d of about %d\n", $n,
       $ENV{PAYLOAD} // 'supervisor', $H, $ENV{BATCH_DELAY} // '50ms',
       $ENV{RECHECK} // '5m', $ENV{AGENT_TIMEOUT} // '90s',
       (($c1 - $c0) - $idle * ($t1 - $t0)) * 1e6 / $beats, $shorts,
       $w1 - $w0, $beats;
for my $k (sort keys %$s1) {
    my $calls = $s1->{$k}[0] - ($s0->{$k}[0] // 0) or next;
    my $us = $s1->{$k}[1] - ($s0->{$k}[1] // 0);
    printf "  %-8s calls=%d us_per_call=%.1f us_per_heartbeat=%.2f\n",
        $k, $calls, $us / $calls, $us / $beats;
}

# the same script by hand on the same agents, caches warm
kill 'STOP', @pids;
sleep 2;
my $sha = $t->redis('SCRIPT', 'LOAD',
                    scalar `sh $top/src/lua/expand.sh $top/src/lua/beats.lua`);
my $uids = $t->redis('ZRANGE', "${P}agents", 0, 2047);
# "1": the full check of an agent that accepts restart; "L": a worker's
# lease renewal (lib/short_way.lua)
for my $checks ('1', 'L') {
    my ($spent, $done) = (0, 0);
    for my $round (1 .. 4) {
        for (my $i = 0; $i + 16 <= @$uids; $i += 16) {
            my @args;
            for my $u (@$uids[$i .. $i + 15]) {
                my ($sq, $settled) = @{ $t->redis('HMGET',
                    "${P}agent:{$u}", 'sequence_num', 'settled') };
                my ($mark) = ($settled // '') =~ / (\S+)$/;
                push @args, $u, $sq + 1, $sq, $mark // '', $checks,
                     1796658006990;
            }
            my $u0 = commandstats()->{evalsha}[1];
            my $out = $t->redis('EVALSHA', $sha, 1, "${P}config_version",
                                1796658006990, $P, @args);
            $spent += commandstats()->{evalsha}[1] - $u0;
            $done += grep { $_ != 0 } @$out;
        }
    }
    printf "replayed: beats.lua %s %.2f us per agent, 16 a call, caches "
           . "warm (%d took the short way)\n",
           $checks eq 'L' ? 'lease renewals' : 'full checks',
           $spent / ($done || 1), $done;
}
kill 'CONT', @pids;

kill 'TERM', @pids;
waitpid $_, 0 for @pids;
$t->done;
done_testing;
