#!/usr/bin/perl

# Each nginx host's own figures in Redis (docs/redis-schema.md,
# <prefix>host:<name> and <prefix>hosts) and GET hosts of the admin API
# (docs/admin-api.md): two nginx on one Redis, told apart by
# opamp_server_id, each publish what their metrics endpoint knows of the
# whole host (summed over its two workers), one worker a host and one
# script call a period; each record expires; GET hosts on either lists
# both, and a host that stops is listed as stale once its record has
# expired, without figures.

use strict;
use warnings;

use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use JSON::PP;
use IO::Socket::INET;
use IO::Select;
use Time::HiRes qw(time sleep);

use OpAMPTest;
use OpAMPFleet;

my $P = 'opamp:';
my $server = '
        location /admin/ { opamp_admin; }';

my $ta = OpAMPTest->new;
$ta->start_redis;
my $tb = OpAMPTest->new(redis_port => $ta->redis_port);

# what Redis is asked, from before the hosts start
my $mon = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                PeerPort => $ta->redis_port)
    or die "monitor: $!\n";
syswrite($mon, "MONITOR\r\n");
my $monbuf = '';
sub monitor_lines {
    my $sel = IO::Select->new($mon);
    while ($sel->can_read(0.2)) {
        last unless sysread($mon, $monbuf, 1 << 20, length $monbuf);
    }
    my @l = split /\r\n/, $monbuf, -1;
    $monbuf = pop @l;
    return @l;
}

my $t0 = int(time * 1000);
$ta->start_nginx($server, workers => 2, http => 'opamp_server_id host-a;');
$tb->start_nginx($server, workers => 2, http => 'opamp_server_id host-b;');

sub hosts {
    my ($t) = @_;
    my ($st, undef, $b) = $t->http_post('', -method => 'GET',
                                        -path => '/admin/hosts',
                                        'Content-Type' => undef);
    die "GET hosts: $st\n" unless ($st // 0) == 200;
    my $j = decode_json($b);
    return { map { $_->{name} => $_ } @{ $j->{hosts} } }, $j;
}

ok($ta->wait_for(sub {
    my ($h) = hosts($ta);
    $h->{'host-a'} && $h->{'host-b'}
}, 20), 'GET hosts lists both hosts once they published');

my ($h, $j) = hosts($ta);
is($j->{period_ms}, 5000, 'the period');
is(scalar keys %$h, 2, 'two hosts, no other');
for my $n ('host-a', 'host-b') {
    my $f = $h->{$n}{figures};
    ok(!$h->{$n}{stale}, "$n: not stale");
    is($f->{workers}, 2, "$n: its workers");
    like($f->{nginx_version}, qr/^\d+\.\d+\.\d+$/, "$n: nginx's version");
    is($f->{schema}, 3, "$n: the Redis schema");
    cmp_ok($f->{started_ms}, '>=', $t0 - 1000, "$n: when it started");
    cmp_ok($f->{started_ms}, '<=', $f->{published_ms}, '... before it '
           . 'published');
    is($h->{$n}{last_publish_ms}, $f->{published_ms},
       "$n: the index scored by the last publish");
    ok(exists $f->{$_}, "$n: $_")
        for qw(websocket_connections agent_messages_http
               agent_messages_websocket agent_message_bytes_http
               server_messages_http refused redis_commands redis_errors
               redis_timeouts redis_reconnects redis_failovers
               redis_waiting fanouts swept pid);
}
my ($hb) = hosts($tb);
is_deeply([ sort keys %$hb ], [ 'host-a', 'host-b' ],
          'GET hosts on the other host lists the same two');

my $pttl = $ta->redis('PTTL', "${P}host:host-a");
cmp_ok($pttl, '>', 0, 'the record expires');
cmp_ok($pttl, '<=', 15000, '... within three periods');
is($ta->redis('ZCARD', "${P}hosts"), 2, 'the index: two hosts');

# the host's figures, summed over its workers: three plain HTTP messages
# to host a, a WebSocket agent held by host b
for (1 .. 3) {
    my ($st) = $ta->http_post($ta->a2s('instance_uid: "'
        . uid_escape(random_uid()) . '" sequence_num: 0 capabilities: 1'));
    is($st, 200, 'an agent reports to host a');
}
my $c = OpAMPFleet->connect_ws(port => $tb->port);
$c->send_msg($tb->a2s('instance_uid: "' . uid_escape(random_uid())
                      . '" sequence_num: 0 capabilities: 1'));
ok(defined $c->recv_msg(5), 'a WebSocket agent on host b');
ok($ta->wait_for(sub {
    my ($h) = hosts($ta);
    $h->{'host-a'}{figures}{agent_messages_http} == 3
        && $h->{'host-b'}{figures}{websocket_connections} == 1
}, 20), 'the next publish: host a\'s 3 HTTP messages, host b\'s WebSocket '
   . 'agent');
($h) = hosts($ta);
is($h->{'host-b'}{figures}{agent_messages_http}, 0,
   'each host its own figures');
cmp_ok($h->{'host-a'}{figures}{agent_message_bytes_http}, '>', 0,
       'host a: message bytes');
cmp_ok($h->{'host-a'}{figures}{redis_commands}, '>', 0,
       'host a: Redis commands');

# one worker a host publishes, one script call a period: over 12 s (at
# most three periods' publishes), at most 3 calls each
monitor_lines();
sleep 12;
my %calls;
for (monitor_lines()) {
    $calls{$1}++ if /"EVAL" .* "\Q${P}\Ehost:(host-[ab])" "\Q${P}\Ehosts"/;
}
cmp_ok($calls{'host-a'} // 0, '>=', 1, 'host a published in 12 s');
cmp_ok($calls{'host-a'} // 0, '<=', 3,
       '... at most once a period: one worker of its two ('
       . ($calls{'host-a'} // 0) . ' calls)');
cmp_ok($calls{'host-b'} // 0, '<=', 3, 'host b likewise ('
       . ($calls{'host-b'} // 0) . ' calls)');
close $mon;

# host b stops: its record expires, GET hosts shows it stale
$c->close;
$tb->stop_nginx;
my $stopped = time;
ok($ta->wait_for(sub {
    my ($h) = hosts($ta);
    $h->{'host-b'} && $h->{'host-b'}{stale}
}, 30), 'a host that stopped is listed as stale');
($h) = hosts($ta);
ok(!exists $h->{'host-b'}{figures}, '... without figures: its record '
   . 'expired');
is($ta->redis('EXISTS', "${P}host:host-b"), 0, '... gone from Redis');
ok(!$h->{'host-a'}{stale}, 'the other host goes on');
cmp_ok($h->{'host-b'}{last_publish_ms}, '<=', int($stopped * 1000),
       '... b\'s last publish before it stopped');

# the bounds: the index keeps 128 hosts at most, the newest; GET hosts
# lists what it keeps
$ta->redis('ZADD', "${P}hosts", map { ($_, "old-$_") } 1 .. 300);
ok($ta->wait_for(sub { $ta->redis('ZCARD', "${P}hosts") <= 128 }, 20),
   'the next publish prunes the index (hosts not heard of for an hour)');
($h) = hosts($ta);
ok($h->{'host-a'} && !grep(/^old-/, keys %$h),
   'what is left: the hosts heard of lately');
my $now = int(time * 1000);
$ta->redis('ZADD', "${P}hosts", map { ($now - $_, "many-$_") } 1 .. 300);
ok($ta->wait_for(sub { $ta->redis('ZCARD', "${P}hosts") == 128 }, 20),
   'past 128 hosts heard of lately, the oldest go');
(undef, $j) = hosts($ta);
is(scalar @{ $j->{hosts} }, 128, 'GET hosts: 128 at most');
is($j->{hosts}[0]{name}, 'host-a', '... newest publish first');
ok($j->{hosts}[1]{stale}, '... a host without a record: stale');

my ($st) = $ta->http_post('x', -method => 'POST', -path => '/admin/hosts');
is($st, 405, 'POST hosts: 405');

$tb->done;
$ta->done;
done_testing;
