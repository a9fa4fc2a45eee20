#!/usr/bin/perl

# One sweeper for the whole fleet (docs/directives.md
# opamp_agent_retention, docs/redis-schema.md <prefix>sweep:lease): of all
# the workers of all the hosts on one Redis, only the one that holds the
# lease removes departed agents; a backlog is cleared at the documented
# pace (a batch of 100 every 50 ms, not one batch per period); when the
# holder goes away, another worker takes the lease over once it expires,
# also after Redis's script cache was flushed.

use strict;
use warnings;

use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use IO::Socket::INET;
use IO::Select;
use Time::HiRes qw(time sleep);

use OpAMPTest;

my $P = 'opamp:';
my $BACKLOG = 20000;

# retention 6 s: a period of 3 s (75% to 125% of it jittered), a lease of
# three periods, 9 s
my $http = 'opamp_agent_retention 6s;';

my $ta = OpAMPTest->new;
$ta->start_redis;
my $tb = OpAMPTest->new(redis_port => $ta->redis_port);
$ta->start_nginx('', workers => 2, http => "$http opamp_server_id host-a;");
$tb->start_nginx('', workers => 2, http => "$http opamp_server_id host-b;");

# departed agents written straight into Redis, as the module leaves them:
# a hash seen long ago, a status string, an index entry; returns the
# index's size right after, in the same script (a sweep step may come
# before the next command)
sub departed {
    my ($n, $tag) = @_;
    $ta->redis('EVAL', <<'LUA', 0, $P, $n, $tag);
for i = 1, tonumber(ARGV[2]) do
    local uid = string.format('%s-0000-4000-8000-%012d', ARGV[3], i)
    redis.call('HSET', ARGV[1] .. 'agent:{' .. uid .. '}',
               'last_seen_ms', 1000, 'connected', '0', 'expires_ms', 2000)
    redis.call('SET', ARGV[1] .. 'status:{' .. uid .. '}', 'x')
    redis.call('ZADD', ARGV[1] .. 'agents', 1000, uid)
end
return redis.call('ZCARD', ARGV[1] .. 'agents')
LUA
}

sub zcard { return $ta->redis('ZCARD', "${P}agents") }

# MONITOR: which client called each sweep step, and what each removed
my $mon = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                PeerPort => $ta->redis_port, Proto => 'tcp')
    or die "monitor: $!\n";
syswrite($mon, "MONITOR\r\n");
my $monbuf = '';
my (%calls, %removing, $cur);
sub monitor_read {
    my ($secs) = @_;
    my $sel = IO::Select->new($mon);
    while ($sel->can_read($secs // 0.1)) {
        last unless sysread($mon, $monbuf, 1 << 20, length $monbuf);
        $secs = 0;
    }
    my @l = split /\r\n/, $monbuf, -1;
    $monbuf = pop @l;
    for (@l) {
        if (/^\+?[\d.]+ \[\d+ ([\d.:]+)\] "EVAL(?:SHA)?" .* "sweep"/) {
            $calls{$1}++;
            $cur = $1;
        } elsif (/^\+?[\d.]+ \[\d+ lua\] "DEL" "\Q$P\Eagent:\{/) {
            $removing{$cur}++ if defined $cur;
        } elsif (!/\[\d+ lua\]/) {
            undef $cur;
        }
    }
}
monitor_read(0.2);

is(departed($BACKLOG, 'aaaaaaaa'), $BACKLOG,
   "$BACKLOG departed agents in the index");

my $first;
ok($ta->wait_for(sub { monitor_read(); zcard() < $BACKLOG }, 15),
   'a sweep starts within a period and a bit');
$first = time;
ok($ta->wait_for(sub { monitor_read(); zcard() == 0 }, 60),
   'the backlog is cleared');
my $took = time - $first;
# MONITOR's lines of the last steps may still be on their way
$ta->wait_for(sub {
    monitor_read();
    my $n = 0;
    $n += $_ for values %removing;
    $n >= $BACKLOG;
}, 10);

# 200 steps of 100, 50 ms apart: 10 s plus Redis's time; one batch per
# period (3 s) would take 600 s
diag(sprintf '%d departed agents removed in %.1f s (documented: about '
     . '2,000 a second)', $BACKLOG, $took);
cmp_ok($took, '<', 30, 'at the documented pace, not a batch a period');

my @removers = grep { $removing{$_} } keys %removing;
is(scalar @removers, 1, 'one worker of the four removed them all')
    or diag(explain \%removing);
my $sum = 0;
$sum += $_ for values %removing;
is($sum, $BACKLOG, 'MONITOR saw every removal');

# the clearing took longer than 1.25 periods, so every worker asked at
# least once meanwhile: four clients called the sweep, three got nothing
is(scalar(keys %calls), 4,
       'all four workers asked (and three were turned away)')
    or diag(explain \%calls);

my $holder = $ta->redis('GET', "${P}sweep:lease");
like($holder // '', qr/^\Q$P\Eworker:host-[ab]:\d+$/,
     'the lease names the sweeping worker by its channel');
my $ttl = $ta->redis('PTTL', "${P}sweep:lease");
ok($ttl > 0 && $ttl <= 9000, "and lasts at most three periods ($ttl ms)");

# --- the holder goes away: another worker takes the lease over ----------

my ($hpid) = $holder =~ /:(\d+)$/;
my ($gone, $stays) = (grep { $_ == $hpid } $ta->worker_pids)
                     ? ($ta, $tb) : ($tb, $ta);
ok(scalar(grep { $_ == $hpid } $gone->worker_pids),
   'the holder is a worker of one of the two instances');
$gone->stop_nginx;
%removing = ();
# and Redis's script cache is flushed: the sweep's EVALSHA finds no
# script, and its next step sends the source
$ta->redis('SCRIPT', 'FLUSH');

departed(500, 'bbbbbbbb');
ok($ta->wait_for(sub { monitor_read(); zcard() == 0 }, 30),
   'after the lease expires, the other instance sweeps');
my $new = $ta->redis('GET', "${P}sweep:lease") // '';
my ($npid) = $new =~ /:(\d+)$/;
ok($npid && grep({ $_ == $npid } $stays->worker_pids),
   'the lease now names a worker of the instance that stayed');

close $mon;
$tb->done;
$ta->done;

done_testing;
