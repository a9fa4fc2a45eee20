#!/usr/bin/perl

# The dashboard at a large fleet (docs/performance.md, "Dashboard"):
#
#   NGINX_MODULE=build/ngx_http_opamp_module.so bench/dashboard.pl [AGENTS]
#
# Starts Redis and nginx (2 workers) of its own on loopback ports (the
# test harness, t/lib/OpAMPTest.pm), makes three collectors report their
# full status over plain HTTP (two builds, two versions, a group config
# applied by two of them, FAILED by the third), then copies them in Redis
# to AGENTS agents (default 100,000, at most 200,000; 5,000 a script
# call) with their shares of the fleet gauges, the inventory, the group's
# members and the shared content, as if each had reported, and starts a
# staged rollout of the group (paused at its first stage).  Then it measures, over one
# keep-alive connection, each admin API call the dashboard's views make
# (200 times each: p50, p99, bytes, Redis time per call from INFO
# commandstats), and runs t/node/dashboard-bench.mjs: the page in
# chromium, each view loaded 5 times (time until its content shows, the
# API calls it made).  Prints the figures; everything it started is
# stopped at the end.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/../t/lib";
use IO::Socket::INET;
use JSON::PP;
use Time::HiRes qw(time);
use Test::More;      # OpAMPTest's done() reports with ok()

use OpAMPTest;
use OpAMPCollector;

my $N = $ARGV[0] // 100000;
die "AGENTS: 3 to 200,000\n" if $N < 3 || $N > 200000;
my $P = 'opamp:';

my $t = OpAMPTest->new;
$t->start_redis;
$t->start_nginx('
        location /opamp-admin/ { opamp_admin; }
        location = /metrics { opamp_metrics; }
        location /opamp-dashboard/ { opamp_dashboard /opamp-admin/ /metrics; }',
    workers => 2, http => 'opamp_agent_retention off;');

sub admin {
    my ($method, $path, $body) = @_;
    my ($st, undef, $b) = $t->http_post($body // '', -method => $method,
                                        -path => "/opamp-admin/$path",
                                        'Content-Type' => 'application/json');
    die "$method $path: $st $b\n" unless $st =~ /^2/;
    return eval { decode_json($b) };
}

my $CAPS = $OpAMPCollector::CAPABILITIES;
admin('PUT', 'configs/groups/web', encode_json({
    selector => 'service.name=web',
    files => { 'collector.yaml' => { body => "receivers: {otlp: {}}\n" } } }));

my @tpl;
for my $i (1 .. 3) {
    my $u = random_uid();
    my $text = OpAMPCollector::full_status(uid => $u, seq => 0,
                                           host => "tpl-$i",
                                           build => $i == 3 ? 2 : 1);
    $text =~ s/string_value: "otelcol-contrib"/string_value: "web"/;
    $text =~ s/string_value: "0\.114\.0"/string_value: "0.113.0"/ if $i == 3;
    my ($st, undef, $body) = $t->http_post($t->a2s($text));
    die "report: $st\n" unless $st == 200;
    my ($hash) = $t->s2a_text($body) =~ /config_hash: "((?:[^"\\]|\\.)*)"/;
    $t->http_post($t->a2s('instance_uid: "' . uid_escape($u)
        . "\" sequence_num: 1 capabilities: $CAPS remote_config_status { "
        . "last_remote_config_hash: \"$hash\" status: "
        . ($i == 3 ? 'RemoteConfigStatuses_FAILED error_message: "bad"'
                   : 'RemoteConfigStatuses_APPLIED') . ' }'));
    push @tpl, uid_text($u);
}

# copies of the three agents: their hashes and status strings under new
# uids, the index, and each count they are part of multiplied
my $clone = <<'LUA';
local prefix, from, to, now = ARGV[1], tonumber(ARGV[2]),
                              tonumber(ARGV[3]), tonumber(ARGV[4])
local tpl = {}
for i = 5, #ARGV do
    tpl[#tpl + 1] = { redis.call('HGETALL', prefix .. 'agent:{' .. ARGV[i]
                                 .. '}'),
                      redis.call('GET', prefix .. 'status:{' .. ARGV[i]
                                 .. '}') }
end
for n = from, to do
    local uid = string.format('01900000-0000-7000-8000-%012x', n)
    local t = tpl[n % #tpl + 1]
    redis.call('HSET', prefix .. 'agent:{' .. uid .. '}', unpack(t[1]))
    redis.call('SET', prefix .. 'status:{' .. uid .. '}', t[2])
    redis.call('ZADD', prefix .. 'agents', now - n, uid)
    -- a group's members by rank (lib/gauges.lua, lib/rollout.lua), as
    -- the scripts keep them: what GET agents?group= and rollouts read
    for i = 1, #t[1], 2 do
        if t[1][i] == 'desired_config'
           and string.sub(t[1][i + 1], 1, 6) == 'group:' then
            redis.call('ZADD', prefix .. 'group_members:'
                       .. string.sub(t[1][i + 1], 7),
                       tonumber(string.sub(redis.sha1hex(uid), 1, 8), 16),
                       uid)
        end
    end
end
return to - from + 1
LUA

my $now = int(time * 1000);
my $made = 0;
my $t0 = time;
for (my $from = 1; $from <= $N - 3; $from += 5000) {
    my $to = $from + 4999 > $N - 3 ? $N - 3 : $from + 4999;
    $made += $t->redis('EVAL', $clone, 0, $P, $from, $to, $now, @tpl);
}
# each template was counted once, and now stands for $N / 3 agents
my $k = $N / 3;
for my $h ("${P}fleet:gauges", "${P}fleet:inventory") {
    my $f = $t->hgetall($h);
    $t->redis('HSET', $h, map { ($_, int($f->{$_} * $k + 0.5)) } keys %$f);
}
my $lists = $t->hgetall("${P}fleet:inventory:lists");
for (grep { /^#/ } keys %$lists) {
    $t->redis('HSET', "${P}fleet:inventory:lists", $_,
              int($lists->{$_} * $k + 0.5));
}
for my $s (@{ $t->redis('KEYS', "${P}shared:*") }) {
    my $r = $t->redis('HGET', $s, 'refs') // next;
    $t->redis('HSET', $s, 'refs', int($r * $k + 0.5));
}
# a staged rollout of the group, paused at its first stage: the rollouts
# view and the group's page show it, the workers' ticks read its gates
admin('PUT', 'configs/groups/web', encode_json({
    selector => 'service.name=web',
    files => { 'collector.yaml' => { body => "receivers: {otlp: {}}\n"
                                              . "exporters: {debug: {}}\n" } },
    rollout => { stages => [ 1, '100%' ], soak_s => 3600 } }));
admin('POST', 'rollouts/web/pause');

printf "agents in Redis: %d (%d copied in %.1f s), used_memory %.0f MB\n",
    $t->redis('ZCARD', "${P}agents"), $made, time - $t0,
    ($t->redis('INFO', 'memory') =~ /used_memory:(\d+)/)[0] / 1e6;

# --- the admin API calls of the views, one by one ------------------------

# Redis's CPU time so far, all commands and scripts
sub redis_usec {
    my $s = $t->redis('INFO', 'commandstats');
    my $total = 0;
    $total += $1 while $s =~ /^cmdstat_\w+:calls=\d+,usec=(\d+)/mg;
    return $total;
}

sub timed {
    my ($path, $count) = @_;
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                  PeerPort => $t->port, Proto => 'tcp',
                                  Timeout => 5) or die "connect: $!\n";
    my (@d, $bytes);
    my $r0 = redis_usec();
    for (1 .. $count) {
        my $a = time;
        syswrite($s, "GET $path HTTP/1.1\r\nHost: bench\r\n\r\n");
        my ($buf, $head, $need) = ('');
        while (1) {
            sysread($s, $buf, 1 << 20, length $buf) or die "read: $!\n";
            if (!defined $head && (my $i = index($buf, "\r\n\r\n")) >= 0) {
                $head = substr($buf, 0, $i + 4, '');
                ($need) = $head =~ /Content-Length:\s*(\d+)/i;
                $need //= 0;
            }
            last if defined $head && length $buf >= $need;
        }
        die "$path: $head\n" unless $head =~ m{^HTTP/1\.1 200};
        $bytes = length $buf;
        push @d, (time - $a) * 1e3;
    }
    # the INFO calls themselves are counted too: a few us each
    my $redis = (redis_usec() - $r0) / $count;
    @d = sort { $a <=> $b } @d;
    printf "%-58s p50 %6.2f ms  p99 %6.2f ms  %7d B  Redis %6.0f us\n",
        $path, $d[@d / 2], $d[int(@d * 0.99)], $bytes, $redis;
}

# the host's own figures, published a second after its start, then
# every 5 s
$t->wait_for(sub { @{ admin('GET', 'hosts')->{hosts} } > 0 }, 10)
    or die "the host did not publish its figures\n";

print "\nadmin API calls (200 each, one keep-alive connection):\n";
timed('/opamp-dashboard/', 200);
timed('/opamp-dashboard/dashboard.js', 200);
timed('/opamp-admin/fleet', 200);
timed('/opamp-admin/hosts', 200);
timed('/opamp-admin/agents?limit=50', 200);
timed('/opamp-admin/agents?limit=50&cursor=50000', 200);
timed('/opamp-admin/agents?limit=50&config_status=FAILED', 200);
timed('/opamp-admin/agents?limit=50&attr=service.version%3D0.113.0', 200);
timed('/opamp-admin/agents?limit=50&component=receivers%2Frece001', 200);
timed('/opamp-admin/agents?limit=50&connected=1', 200);
timed('/opamp-admin/agents?limit=50&group=web', 200);
timed('/opamp-admin/agents?limit=50&group=web&cursor=50000', 200);
timed('/opamp-admin/agents?limit=50&group=web&config_status=FAILED', 200);
timed("/opamp-admin/agents/$tpl[0]", 200);
timed('/opamp-admin/configs/groups/web', 200);
timed('/opamp-admin/configs/groups', 200);
timed('/opamp-admin/audit?limit=50', 200);
timed('/opamp-admin/rollouts', 200);
timed('/opamp-admin/rollouts/web', 200);

# --- the page in chromium ------------------------------------------------

print "\nthe page in chromium (5 loads a view, median):\n";
my $node = "$FindBin::Bin/../t/node";
my $base = 'http://127.0.0.1:' . $t->port . '/opamp-dashboard/';
system("cd '$node' && BASE='$base' UID='$tpl[0]' timeout 300 "
       . 'node dashboard-bench.mjs');

$t->done;
done_testing;
