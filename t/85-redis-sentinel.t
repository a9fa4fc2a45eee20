#!/usr/bin/perl

# Redis as it runs in production: a primary, a replica and three
# Sentinels (with a password), two nginx instances of two workers each
# that name only the Sentinels (opamp_redis sentinel://...), agents over
# WebSocket (bench/loadgen) and plain HTTP on both.  The primary is killed
# by its pid: every worker finds the new primary without a reload, the
# WebSocket agents keep their connections, every agent's state is written
# to the new primary within a few heartbeats, a config PUT acknowledged
# with opamp_redis_wait survives, and nothing above [error] is logged.
# Then the new primary loses some agents' recent writes (as a replica
# that missed them would): their sequence check asks them for their full
# state and the fleet converges.

use strict;
use warnings;

use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use Time::HiRes qw(time sleep);
use POSIX qw(WNOHANG);
use IO::Socket::INET;
use IO::Select;

use OpAMPTest;
use OpAMPRedisHA;

my $WS_PER_NGINX = $ENV{TEST_HA_WS_AGENTS} // 450;
my $HTTP_AGENTS = $ENV{TEST_HA_HTTP_AGENTS} // 100;

my $bench = "$FindBin::Bin/../bench";
my $out = `make -s -C $bench loadgen 2>&1`;
is($?, 0, 'bench/loadgen builds') or diag $out;

my $p1 = OpAMPTest::free_port();
my $SPASS = 'sentinel-secret';

my $t = OpAMPTest->new(redis_port => $p1);
my $ha = OpAMPRedisHA->new($t);

# a primary, a replica and three Sentinels
my $set = $ha->sentinel_set(pass => $SPASS);
my ($primary, $replica, $p2) = @$set{qw(primary replica replica_port)};
my @sp = @{ $set->{sentinel_ports} };

my $sentinel_url = $set->{url};
my %conf = (
    workers => 2,
    redis => $sentinel_url,
    http => "opamp_redis_sentinel_auth $SPASS;\n"
            . "    opamp_redis_wait 1 2s;\n"
            . "    opamp_redis_timeout 4s;",
);
my $ADMIN = '
        location /admin/ { opamp_admin; }';

$t->start_nginx($ADMIN, %conf);
my $t2 = OpAMPTest->new(redis_port => $p1);
$t2->start_nginx($ADMIN, %conf);

pass('two nginx instances of two workers each are connected through the '
     . 'Sentinels');

# --- agents -----------------------------------------------------------

my %lg;
my $duration = $ENV{TEST_HA_DURATION} // 40;
my $t_lg = time;
for my $n ([$t, 1], [$t2, 2]) {
    my ($inst, $k) = @$n;
    my $file = $t->dir . "/loadgen-$k.out";
    my $pid = fork() // die;
    if ($pid == 0) {
        open STDOUT, '>', $file;
        open STDERR, '>&', \*STDOUT;
        exec "$bench/loadgen", '--mode', 'hold', '--port', $inst->port,
            '--agents', $WS_PER_NGINX, '--duration', $duration,
            '--heartbeat', 1, '--seed', $k
            or POSIX::_exit(127);
    }
    $lg{$pid} = $file;
}

END { kill 'KILL', $_ for keys %lg }

my $DESC = 'agent_description { identifying_attributes { key: '
           . '"service.name" value { string_value: "ha-http" } } }';
my @http = map { { uid => random_uid(), seq => 0 } } 1 .. $HTTP_AGENTS;

# one message of every HTTP agent, half of them to each nginx; the full
# state when the server asks for it.  Returns how many got a 200.
sub http_round {
    my $ok = 0;
    for my $i (0 .. $#http) {
        my $a = $http[$i];
        my $inst = $i % 2 ? $t2 : $t;
        my $text = 'instance_uid: "' . uid_escape($a->{uid}) . '" '
                   . "sequence_num: $a->{seq} capabilities: 1"
                   . ($a->{seq} == 0 || $a->{full} ? " $DESC" : '');
        my ($s, $h, $b) = eval { $inst->http_post($inst->a2s($text),
                                                  -timeout => 5) };
        next unless defined $s;
        if ($s == 200) {
            $ok++;
            $a->{seq}++;
            $a->{full} = ($t->s2a_text($b) =~ /^flags: 1$/m) ? 1 : 0;
        }
    }
    return $ok;
}

is(http_round(), $HTTP_AGENTS, "$HTTP_AGENTS HTTP agents are served");

my $total = 2 * $WS_PER_NGINX + $HTTP_AGENTS;

ok($t->wait_for(sub { ($t->redis('ZCARD', 'opamp:agents') // 0) == $total },
                30),
   "all $total agents are in Redis");

# --- an acknowledged write, and one that is not -----------------------

my $cfg = '{"selector":"service.name=ha","files":{"a.yaml":'
          . '{"body":"acknowledged: 1\n"}}}';
my ($s, $h, $b) = $t->http_post($cfg, -method => 'PUT',
                                -path => '/admin/configs/groups/ha',
                                'Content-Type' => 'application/json');
like($s, qr/^20[01]$/, 'a config PUT with opamp_redis_wait 1 is acknowledged');
my $cfg_key = (grep { /ha$/ } @{ $ha->cmd($p2, 'KEYS', 'opamp:*config*') })[0];
ok(defined $cfg_key, "and the replica has it at once ($cfg_key)");

# with the replica stopped: a third nginx of one worker, so that the
# admin write and an agent share the worker and its Redis connections
my $t3 = OpAMPTest->new(redis_port => $p1);
$t3->start_nginx($ADMIN, %conf, workers => 1);

$ha->signal($replica, 'STOP');
my $t0 = time;
my $put = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                PeerPort => $t3->port) or die;
my $pbody = '{"selector":"service.name=ha2","files":{"a.yaml":{"body":"x"}}}';
syswrite($put, "PUT /admin/configs/groups/ha2 HTTP/1.1\r\nHost: x\r\n"
         . "Connection: close\r\nContent-Type: application/json\r\n"
         . 'Content-Length: ' . length($pbody) . "\r\n\r\n$pbody");
sleep 0.3;    # the write is done and WAIT is out
my $u3 = random_uid();
my ($as) = $t3->http_post($t3->a2s('instance_uid: "' . uid_escape($u3)
                                   . "\" sequence_num: 0 capabilities: 1 $DESC"));
my $put_pending = !IO::Select->new($put)->can_read(0);
my $resp = '';
while (IO::Select->new($put)->can_read(10)) {
    last unless sysread($put, $resp, 65536, length $resp);
}
my $took = time - $t0;
$ha->signal($replica, 'CONT');
($s, $b) = $resp =~ m{^HTTP/1\.1 (\d+).*?\r\n\r\n(.*)}s;
is($s, 504, 'with the replica stopped, the PUT answers 504');
like($b, qr/0 of 1 replicas confirmed it within 2000 ms.*may not be durable/,
     'saying that the write may not be durable');
ok($took >= 1.9 && $took < 4, sprintf 'after the wait timeout (%.1f s)',
   $took);
is($as, 200, 'an agent on the same worker is served meanwhile');
ok($put_pending, 'before the PUT is answered: agents do not queue behind '
   . 'the WAIT');
$t3->done;
# that agent is gone: it does not count in the fleet below
$t->redis('ZREM', 'opamp:agents', uid_text($u3));
$t->redis('DEL', $t->agent_key($u3));

ok($t->wait_for(sub {
       my $r = eval { $ha->cmd($p2, 'INFO', 'replication') } // '';
       $r =~ /master_link_status:up/ }, 15),
   'the replica is back in sync');

# --- failover ---------------------------------------------------------

my @uids = @{ $t->redis('ZRANGE', 'opamp:agents', 0, -1) };
is(scalar @uids, $total, 'the agents before the failover');

# the replica has them all before the primary goes
ok($t->wait_for(sub { ($ha->cmd($p2, 'ZCARD', 'opamp:agents') // 0)
                      == $total }, 10),
   'the replica has every agent');

my $t_fail = time;
my $fail_ms = int($t_fail * 1000);
$ha->signal($primary, 'KILL');
$ha->reap($primary);

ok($t->wait_for(sub {
       my $r = eval { $ha->cmd($sp[0], 'SENTINEL', 'get-master-addr-by-name',
                               'opamp', auth => $SPASS) } // [];
       ($r->[1] // 0) == $p2 }, 30),
   'the Sentinels promote the replica');
my $t_promoted = time;

# the harness looks at the new primary from now on
$_->{redis_port} = $p2, delete $_->{rconn} for $t, $t2;

ok($t->wait_for(sub { $t->workers_ready(2) && $t2->workers_ready(2) }, 20),
   'every worker of both nginx instances is connected to the new primary');
my $t_follow = time;
diag(sprintf 'promoted %.1f s after the kill, workers on it %.1f s later',
     $t_promoted - $t_fail, $t_follow - $t_promoted);

my $role = $ha->cmd($p2, 'ROLE');
is($role->[0], 'master', 'the new primary says it is one');

# every agent writes its state to the new primary within a few heartbeats
my @late;
ok($t->wait_for(sub {
       http_round();
       @late = ();
       for my $u (@uids) {
           my $seen = $t->redis('HGET', "opamp:agent:{$u}", 'last_seen_ms');
           push @late, $u unless defined $seen && $seen > $fail_ms;
       }
       !@late }, 20),
   'every agent has reported to the new primary since the failover')
    or diag(scalar(@late) . ' not yet, e.g. ' . ($late[0] // ''));

($s, $h, $b) = $t2->http_post('', -method => 'GET',
                              -path => '/admin/configs/groups/ha');
is($s, 200, 'the acknowledged config survived the failover');
like($b, qr/acknowledged: 1/, 'with its content');

# --- the new primary lost some recent writes --------------------------

my @lost = @uids[0 .. 49];
for my $i (0 .. $#lost) {
    if ($i % 2) {
        $t->redis('DEL', "opamp:agent:{$lost[$i]}", "opamp:status:{$lost[$i]}");
    } else {
        $t->redis('HINCRBY', "opamp:agent:{$lost[$i]}", 'sequence_num', -3);
    }
}
my $cut_ms = int(time * 1000);

my @bad;
ok($t->wait_for(sub {
       http_round();
       @bad = ();
       for my $u (@lost) {
           my $a = $t->hgetall("opamp:agent:{$u}");
           my $st = OpAMPTest::status_fields(
                        $t->redis('GET', "opamp:status:{$u}"));
           push @bad, $u unless ($a->{last_seen_ms} // 0) > $cut_ms
                                && defined $st->{description};
       }
       !@bad }, 20),
   'agents whose writes were lost report their full state again')
    or diag(scalar(@bad) . ' not yet');

# --- the WebSocket agents held on ------------------------------------

my %res;
for my $pid (keys %lg) {
    my $deadline = $t_lg + $duration + 20;
    while (time < $deadline && waitpid($pid, WNOHANG) != $pid) {
        sleep 0.1;
    }
    open my $f, '<', $lg{$pid} or next;
    local $/;
    $res{$pid} = <$f> // '';
}
%lg = ();

for my $r (values %res) {
    like($r, qr/reported=$WS_PER_NGINX failed=/,
         "the loadgen's $WS_PER_NGINX WebSocket agents all reported");
    like($r, qr/closed_by_peer=0 /, 'and none lost its connection');
    diag("loadgen: $r");
}

like($t->error_log, qr/\[notice\].*redis primary of "opamp" is 127\.0\.0\.1:$p2/,
     'the workers log the new primary');

ok($t->reload(workers => 2),
   'after a reload, the new workers find the new primary through the '
   . 'Sentinels');

# done(): nothing above [error] (no [crit], [alert] or [emerg]) in the logs
$t2->done;
$t->done;
done_testing;
