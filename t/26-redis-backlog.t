#!/usr/bin/perl

# A Redis that is slow but alive is waited for: its answers trickle in
# (here through a proxy that passes Redis's replies on a few bytes at a
# time), commands wait longer than opamp_redis_timeout behind the
# backlog, and still the connection is kept and every agent is served, as
# in a reconnect storm of a whole fleet.  A Redis that answers nothing is
# still given up after opamp_redis_timeout.

use strict;
use warnings;

use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use IO::Socket::INET;
use IO::Select;
use Time::HiRes qw(time sleep);

use OpAMPTest;

my $t = OpAMPTest->new;
$t->start_redis;

# the proxy: client to Redis at once; Redis to client, once throttled,
# 24 bytes every 40 ms (each forwarded chunk logged with its time, so
# that the test knows how long the backlog really lasted and that Redis
# was never silent for a whole opamp_redis_timeout); once silenced,
# nothing
my $listen = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0,
                                   Listen => 16, ReuseAddr => 1)
    or die "listen: $!";
my $proxy_port = $listen->sockport;
my $mode_file = $t->dir . '/proxy-mode';
my $chunk_log = $t->dir . '/proxy-chunks';

sub proxy_mode {
    open my $f, '>', $mode_file or die;
    print $f shift;
    close $f;
    sleep 0.1;
}

proxy_mode('open');

my $proxy = fork // die "fork: $!";
if ($proxy == 0) {
    # a peer that closes first is a closed link here, not a death
    $SIG{PIPE} = 'IGNORE';
    my $sel = IO::Select->new($listen);
    my (%peer, %pending, %handle);
    my $next = time;
    while (1) {
        open my $f, '<', $mode_file;
        my $mode = <$f> // 'open';
        for my $s ($sel->can_read(0.01)) {
            if ($s == $listen) {
                my $c = $listen->accept or next;
                my $r = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                              PeerPort => $t->redis_port)
                    or next;
                $peer{$c} = $r;
                $peer{$r} = $c;
                $pending{$r} = '';
                $handle{$r} = $r;
                $sel->add($c, $r);
                next;
            }
            my $n = sysread($s, my $buf, 65536);
            if (!$n) {
                my $o = $peer{$s};
                $sel->remove($s, $o);
                delete $pending{$s};
                delete $pending{$o};
                close $s;
                close $o;
                next;
            }
            if (exists $pending{$s}) {
                $pending{$s} .= $buf;         # from Redis: held back
            } else {
                syswrite($peer{$s}, $buf);    # to Redis: at once
            }
        }
        next if $mode eq 'silent';
        my $throttled = $mode eq 'slow';
        next if $throttled && time < $next;
        $next = time + 0.04;
        for my $r (keys %pending) {
            next unless length $pending{$r};
            my $rs = $handle{$r};
            my $chunk = $throttled ? substr($pending{$r}, 0, 24, '')
                                   : substr($pending{$r}, 0,
                                            length $pending{$r}, '');
            syswrite($peer{$rs}, $chunk);
            if ($throttled && open my $l, '>>', $chunk_log) {
                printf $l "%.6f %d\n", time, length $chunk;
            }
        }
    }
    exit 0;
}

$t->start_nginx('', workers => 1,
                http => 'opamp_redis_timeout 1s;',
                redis => "127.0.0.1:$proxy_port");

my $DESC = 'agent_description { identifying_attributes { key: '
           . '"service.name" value { string_value: "b" } } }';

sub poll_socket {
    my ($uid, $seq, $extra) = @_;
    my $body = $t->a2s('instance_uid: "' . uid_escape($uid) . '" '
                       . "sequence_num: $seq capabilities: 1 $extra");
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                  PeerPort => $t->port) or die;
    print $s "POST /v1/opamp HTTP/1.1\r\nHost: x\r\n"
             . "Content-Type: application/x-protobuf\r\n"
             . 'Content-Length: ' . length($body) . "\r\n"
             . "Connection: close\r\n\r\n$body";
    return $s;
}

my @uids = map { random_uid() } 1 .. 30;
my ($st) = $t->http_post($t->a2s('instance_uid: "' . uid_escape($uids[0])
                                 . "\" sequence_num: 0 capabilities: 1 $DESC"));
is($st, 200, 'served through the proxy');

# 30 agents report at once while Redis's answers trickle in: the last
# ones wait well beyond opamp_redis_timeout (1s)
proxy_mode('slow');
my $t0 = time;
my @socks = map { poll_socket($_, 0, $DESC) } @uids;
my %status;
my $sel = IO::Select->new(@socks);
my %buf;
while ($sel->count && time - $t0 < 30) {
    for my $s ($sel->can_read(0.5)) {
        my $n = sysread($s, my $b, 65536);
        if ($n) { $buf{$s} .= $b; next }
        $sel->remove($s);
        my ($code) = ($buf{$s} // '') =~ m{^HTTP/1\.1 (\d+)};
        $status{$code // 'none'}++;
    }
}
my $took = time - $t0;
proxy_mode('open');

# what the proxy did: the backlog's length, and its longest silence
my @chunks;
if (open my $l, '<', $chunk_log) {
    @chunks = map { (split)[0] } <$l>;
}
my $backlog = @chunks ? $chunks[-1] - $chunks[0] : 0;
my $silence = 0;
for my $i (1 .. $#chunks) {
    my $g = $chunks[$i] - $chunks[$i - 1];
    $silence = $g if $g > $silence;
}
cmp_ok($backlog, '>', 1.5, sprintf('the answers trickled in for longer than '
       . 'the timeout (%.2f s of %d chunks, %.2f s in all)', $backlog,
       scalar @chunks, $took));
SKIP: {
    # the premise: Redis (the proxy) kept answering; a machine so loaded
    # that the proxy stalled for a whole second makes no verdict
    skip(sprintf('the proxy itself stalled for %.2f s', $silence), 2)
        if $silence >= 0.9;
    is_deeply(\%status, { 200 => 30 }, 'and every agent was served')
        or diag explain \%status;
    unlike($t->error_log, qr/timed out/, 'the Redis connection was kept');
}
is($t->redis('HGET', 'opamp:agent:{' . uid_text($uids[29]) . '}',
             'sequence_num'), 0, 'the last report is stored');

# a Redis that answers nothing is given up after the timeout: no sooner
# than 1 s after our request (its command is sent once it is read), and
# not much later
proxy_mode('silent');
$t0 = time;
my $s = poll_socket($uids[1], 1, '');
my $reply = '';
while (time - $t0 < 10) {
    my $n = sysread($s, my $b, 65536);
    last unless $n;
    $reply .= $b;
}
my ($code) = $reply =~ m{^HTTP/1\.1 (\d+)};
my $gave_up = time - $t0;
is($code, 503, 'a silent Redis: 503');
cmp_ok($gave_up, '>=', 0.995, sprintf('after the timeout (%.3f s), not '
       . 'sooner', $gave_up));
cmp_ok($gave_up, '<', 1.5, 'and not much later');
ok($t->wait_for(sub {
       $t->error_log =~ /redis command connection .* lost: timed out/ }, 10),
   'the connection is dropped');
proxy_mode('open');

kill 'TERM', $proxy;
waitpid $proxy, 0;

$t->done;
done_testing;
