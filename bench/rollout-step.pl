#!/usr/bin/perl

# What a staged rollout's steps cost Redis (docs/performance.md, "Staged
# rollouts"): bench/loadgen holds AGENTS WebSocket agents (default 10,000;
# capabilities CAPS, default the OpAMP supervisor's set 0x7d47) that
# report APPLIED for each config they are sent, a group takes them all,
# and a rollout of its next version is started and advanced by hand,
# stage by stage (10%, 50%, 100%): Redis CPU (INFO used_cpu_sys +
# used_cpu_user) around each step, less what the held agents cost Redis
# when nothing happens, per agent the step reached; and the timer's step
# (rollout_tick.lua, run by every worker once a second) with a rollout
# running and nothing due, per call.  Loopback only, bounded in agents and
# time.
#
#   perl bench/rollout-step.pl          # AGENTS=10000 CAPS=0x7d47

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/../t/lib";
use Time::HiRes qw(time sleep);
use Test::More;
use JSON::PP;

use OpAMPTest;

my $N = $ENV{AGENTS} // 10000;
my $CAPS = $ENV{CAPS} // '0x7d47';
my $bench = $FindBin::Bin;
my $root = "$FindBin::Bin/..";

system("make -s -C $bench loadgen") == 0 or die "loadgen does not build\n";

my $workers = 2;

my $t = OpAMPTest->new;
$t->start_redis;
$t->start_nginx('
        location /admin/ { opamp_admin; }', workers => $workers,
                connections => $N + 1000,
                main => 'worker_rlimit_nofile '
                        . (2 * $N + 4000 > 20000 ? 20000 : 2 * $N + 4000) . ';');

sub cpu {
    my $i = $t->redis('INFO', 'cpu');
    my ($s) = $i =~ /used_cpu_sys:([\d.]+)/;
    my ($u) = $i =~ /used_cpu_user:([\d.]+)/;
    return $s + $u;
}

sub api {
    my ($method, $path, $body) = @_;
    my ($s, undef, $b) = $t->http_post($body // '', -method => $method,
                                       -path => "/admin/$path",
                                       'Content-Type' => 'application/json');
    return ($s, eval { decode_json($b) } // {});
}

sub gauge { $t->redis('HGET', 'opamp:fleet:gauges', $_[0]) // 0 }

sub body {
    my ($text, $plan) = @_;
    my %b = (selector => '', files => { 'c.yaml' => { body => $text } });
    $b{rollout} = $plan if $plan;
    return encode_json(\%b);
}

my $pid = fork() // die;
if ($pid == 0) {
    open STDOUT, '>', $t->dir . '/hold.out';
    exec "$bench/loadgen", '--mode', 'hold', '--port', $t->port,
        '--agents', $N, '--duration', 600, '--heartbeat', 30,
        '--ack-delay', '3', '--caps', $CAPS, '--seed', 1;
}
END { kill 'TERM', $pid if $pid }

$t->wait_for(sub { ($t->redis('ZCARD', 'opamp:agents') // 0) >= $N }, 120)
    or die "the agents did not all report\n";

my ($s) = api('PUT', 'configs/groups/all', body('v: 1'));
die "PUT: $s\n" unless $s == 200;
$t->wait_for(sub { gauge('owed:running') >= $N }, 120)
    or die "the agents did not all apply version 1: "
           . gauge('owed:running') . "\n";
sleep 3;

# what the held agents cost Redis when nothing happens (heartbeats, the
# workers' timers), per second
my ($c0, $t0) = (cpu(), time);
sleep 5;
my $idle = (cpu() - $c0) / (time - $t0);

# one step: its Redis CPU less the idle, once every agent it reached runs
# the new version
my $h2;

# (the agents report APPLIED 3 s after a config came: the step's own
# work, the decision, the frames and the bookkeeping, is done by then,
# and the reports are counted apart)
sub step {
    my ($what, $call, $reached, $total) = @_;
    my ($c, $t1) = (cpu(), time);
    $call->();
    $t->wait_for(sub {
        gauge('version:all@' . substr($h2, 0, 16)) >= $total
    }, 120) or die "$what: not every agent of the stage was decided\n";
    my ($cd, $td) = (cpu(), time);
    $t->wait_for(sub {
        gauge('version_running:all@' . substr($h2, 0, 16)) >= $total
    }, 120) or die "$what: not every agent of the stage applied\n";
    my ($c2, $t2) = (cpu(), time);
    my $us = (($cd - $c) - $idle * ($td - $t1)) * 1e6;
    my $ack = (($c2 - $cd) - $idle * ($t2 - $td)) * 1e6;
    printf "%s: %d agents reached in %.0f ms; Redis for the step %.1f us "
           . "per agent reached, for their APPLIED reports %.1f us each\n",
           $what, $reached, ($td - $t1) * 1000, $us / ($reached || 1),
           $ack / ($reached || 1);
}

my $plan = { stages => [ '10%', '50%', '100%' ], soak_s => 3600,
             gates => { failed => '5%', unhealthy => '10%' } };
my $ten = int($N * 0.1 + 0.999);
my $half = int($N * 0.5 + 0.999);

step('start, stage 1 (10%)', sub {
    my ($s, $r) = api('PUT', 'configs/groups/all', body('v: 2', $plan));
    die "PUT with a plan: $s\n" unless $s == 200;
    $h2 = $r->{config_hash};
}, $ten, $ten);
step('advance to stage 2 (50%)', sub {
    api('POST', 'rollouts/all/advance');
}, $half - $ten, $half);

# the timer's step with a rollout running and nothing due: the script
# itself, called here the way a worker calls it
my $tick = `sh $root/src/lua/expand.sh $root/src/lua/rollout_tick.lua`;
my $sha = $t->redis('SCRIPT', 'LOAD', $tick);
# (Redis's own time in EVALSHA, INFO commandstats: the bench is alone in
# calling it meanwhile but for the workers' own steps, one a second)
sub evalsha_usec {
    my ($c, $u) = $t->redis('INFO', 'commandstats')
                  =~ /cmdstat_evalsha:calls=(\d+),usec=(\d+)/;
    return ($c // 0, $u // 0);
}
my $n = 2000;
my ($calls0, $usec0) = evalsha_usec();
my $t_lease = 0;
for (1 .. $n) {
    # every call finds the mark of the second but the first after it
    # expires: the fleet's workers, one of which steps
    $t->redis('EVALSHA', $sha, 3, 'opamp:rollouts', 'opamp:fleet:gauges',
              'opamp:config_version', int(time * 1000), 'opamp:',
              'opamp:fleet');
}
my ($calls1, $usec1) = evalsha_usec();
my $tick_us = ($usec1 - $usec0) / (($calls1 - $calls0) || 1);

step('advance to stage 3 (100%)', sub {
    api('POST', 'rollouts/all/advance');
}, $N - $half, $N);

my ($st, $r) = api('POST', 'rollouts/all/advance');
printf "done: %s; the timer's step, a rollout running, nothing due: "
       . "%.1f us per call, Redis's own time (each worker once a second, "
       . "one of which steps)\n",
       $r->{state} // "HTTP $st", $tick_us;
printf "agents=%d caps=%s workers=%d idle_redis=%.1f ms/s\n", $N, $CAPS,
       $workers, $idle * 1000;

kill 'TERM', $pid;
waitpid($pid, 0);
$pid = undef;
$t->done;
done_testing;
