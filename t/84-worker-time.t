#!/usr/bin/perl

# Worker time per message (docs/operations.md, "Limits", "Worker time"):
# the worst messages we can build for each kind of field, at the default
# opamp_max_message_size (4m), each cost the worker's event loop at most
# the documented budget per MB of message, and an ordinary agent on the
# same worker is answered meanwhile and after, normally (not UNAVAILABLE:
# the worker's Redis link did not time out).
#
# The time is the worker's CPU time (utime + stime of /proc/<pid>/stat)
# over the message: what the message took from every other agent of the
# worker, whatever else the machine runs.  The budget is generous (a
# loaded 2-core machine); what it catches is work that grows faster than
# the message: joining 16,000 repeats of a field piece by piece took 6.2 s
# for 1 MB before.
#
# Messages are built byte by byte here (protoc's text format cannot repeat
# a singular field), independent of the module's codec.

use strict;
use warnings;

use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use IO::Socket::INET;
use IO::Select;
use IO::Compress::Gzip qw(gzip $GzipError);
use POSIX ();
use Time::HiRes qw(time sleep);

use OpAMPTest;
use OpAMPWire;
use OpAMPFleet;

# the budget of docs/operations.md: worker CPU time per MB of message
my $BUDGET_MS_PER_MB = 100;
my $MB = 1024 * 1024;
my $MAX = 4 * $MB;           # opamp_max_message_size's default

# under valgrind, AddressSanitizer or debug logging the worker is slower
# by more than any budget: the messages still go through, untimed
my $SLOW = $ENV{TEST_NGINX_VALGRIND} || $ENV{TEST_NGINX_ASAN}
           || $ENV{TEST_NGINX_DEBUG};

my $t = OpAMPTest->new;
$t->start_redis;
$t->start_nginx('
        location = /state {
            opamp;
            opamp_max_agent_state 4m;
        }
        location /admin/ { opamp_admin; }', workers => 1);

my ($worker) = $t->worker_pids;
my $TICK = POSIX::sysconf(POSIX::_SC_CLK_TCK()) || 100;

sub worker_cpu_ms {
    open my $f, '<', "/proc/$worker/stat" or die "stat: $!\n";
    my $s = <$f>;
    $s =~ s/^.*\) //;
    my @f = split / /, $s;
    return ($f[11] + $f[12]) * 1000 / $TICK;   # utime, stime
}

# --- a protobuf encoder of our own -------------------------------------------

# vint, fld, fvar, kv: t/lib/OpAMPWire.pm

sub a2s {
    my ($uid, @rest) = @_;
    return fld(1, $uid) . fvar(2, 0) . fvar(4, 1) . join('', @rest);
}

# $n copies of $piece, as many as fit in $room bytes
sub fill {
    my ($piece, $room, $max) = @_;
    my $n = int($room / length $piece);
    $n = $max if defined $max && $n > $max;
    return $piece x $n;
}

# --- the worst cases, each just under 4 MB -----------------------------------

my $ROOM = $MAX - 64;        # uid, sequence, capabilities, the header
my $ELTS = 65000;            # under the 65,536 elements of one message

my @cases = (
    # the issue: a top-level field repeated, each piece a top-level field
    # that protobuf merges; before, joined piece by piece (O(k^2) copies)
    ['available_components repeated 65,000 times',
     sub { fill(fld(14, fld(2, 'h' x 58)), $ROOM, $ELTS) }],
    ['agent_description repeated 21,000 times (decoded: protobuf-c '
     . 'merged each, copying what came before)',
     sub { fill(fld(3, fld(2, kv('k' x 170, ''))), $ROOM,
                int($ELTS / 3)) }],
    ['custom_capabilities repeated 32,000 times',
     sub { fill(fld(12, fld(1, 'c' x 56)), $ROOM, int($ELTS / 2)) }],
    # the same one level down: one attribute's value 21,000 times, each
    # an array of one value (protobuf-c merged these quadratically too,
    # and refused two values without a value set)
    ['one attribute whose value comes 21,000 times',
     sub { fld(3, fld(1, fld(1, 'k')
               . fill(fld(2, fld(5, fld(1, fld(1, 'v' x 150)))), $ROOM - 16,
                      int($ELTS / 3)))) }],
    ['health: one component whose value comes 21,000 times, each with '
     . 'an attribute',
     sub { fld(5, fvar(1, 1) . fld(6, fld(1, 'c')
               . fill(fld(2, fld(7, kv('k' x 160, ''))), $ROOM - 16,
                      int($ELTS / 3)))) }],
    # merged at every level of a deep chain, a 4 MB string at its end
    ['48 levels of arrays, each value twice, a 4 MB string at the end',
     sub {
         my $v = fld(1, 'x' x ($ROOM - 1200));
         $v = fld(5, '') . fld(5, fld(1, $v)) for 1 .. 48;
         fld(3, fld(1, fld(1, 'k') . fld(2, $v)));
     }],
    ['65,000 attributes',
     sub { fld(3, fill(fld(2, kv('k' x 20, fld(1, 'v' x 35))), $ROOM - 8,
                       int($ELTS / 2) - 8)) }],
    ['65,000 components',
     sub { fld(14, fill(fld(1, fld(1, 'r' x 20)
                                   . fld(2, fld(2, kv('m', '')))),
                        $ROOM - 8, int($ELTS / 4))) }],
    ['one 4 MB string of 4-byte UTF-8 characters',
     sub { fld(3, fld(1, kv('k', fld(1, "\xf0\x9f\x98\x80"
                                         x int(($ROOM - 32) / 4))))) }],
    ['4 MB of unknown fields in an attribute value (decoded: protobuf-c '
     . 'keeps each)',
     sub { fld(3, fld(1, kv('k', fill(fvar(10, 80), $ROOM - 32)))) },
     # 1.4 million of them take more than protobuf-c's budget
     qr/^400 AgentToServer needs more memory to decode/],
    ['health: 65,000 components in its map',
     sub { fld(5, fvar(1, 1) . fill(fld(6, fld(1, 'c' x 30)
                                        . fld(2, fld(4, 's' x 20))),
                                    $ROOM - 16, int($ELTS / 2) - 8)) }],
);

# --- the ordinary agent ------------------------------------------------------

my $good = OpAMPFleet->connect_ws(port => $t->port);
my $good_uid = random_uid();
my $good_seq = 0;
$good->send_msg(a2s($good_uid));
ok(defined $good->recv_msg(5), 'the ordinary agent is answered');

# its next heartbeat: answered normally (no error_response), in how long
sub good_heartbeat {
    $good_seq++;
    $good->send_msg(fld(1, $good_uid) . fvar(2, $good_seq) . fvar(4, 1));
    return time;
}

sub good_answer {
    my ($t0, $wait) = @_;
    my $r = $good->recv_msg($wait);
    return (undef, undef) unless defined $r;
    return (time - $t0, $t->s2a($r));
}

# sends $bytes as a plain HTTP body and, once all of it is written, a
# heartbeat of the ordinary agent; returns the worker's CPU ms over the
# message, the status, the wall ms, and the ordinary agent's answer
sub measure_http {
    my ($body, %h) = @_;
    my $path = delete $h{-path} // '/v1/opamp';
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                  PeerPort => $t->port, Proto => 'tcp',
                                  Timeout => 5) or die "connect: $!\n";
    binmode $s;
    my $hdr = join '', map { "$_: $h{$_}\r\n" } sort keys %h;
    my $req = "POST $path HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
              . "Content-Type: application/x-protobuf\r\n$hdr"
              . 'Content-Length: ' . length($body) . "\r\n\r\n" . $body;
    my $cpu0 = worker_cpu_ms();
    my $t0 = time;
    my $off = 0;
    while ($off < length $req) {
        my $n = syswrite($s, $req, length($req) - $off, $off);
        last unless $n;
        $off += $n;
    }
    my $g0 = good_heartbeat();
    my $resp = '';
    my $sel = IO::Select->new($s);
    while ($sel->can_read(60)) {
        my $n = sysread($s, $resp, 65536, length $resp);
        last unless $n;
    }
    my $wall = (time - $t0) * 1000;
    my ($glat, $gmsg) = good_answer($g0, 30);
    my $cpu = worker_cpu_ms() - $cpu0;
    my ($status) = $resp =~ m{^HTTP/1\.1 (\d+)};
    my ($b) = $resp =~ /\r\n\r\n(.*)$/s;
    my $m = eval { $t->s2a($b // '') };
    $status .= ' ' . $m->{error_response}{error_message}
        if $m && $m->{error_response};
    return ($cpu, $status, $wall, $glat, $gmsg);
}

sub check {
    my ($name, $size, $cpu, $status, $wall, $glat, $gmsg, $ok) = @_;
    my $mb = $size / $MB;
    my $budget = $BUDGET_MS_PER_MB * ($mb < 1 ? 1 : $mb);
    diag(sprintf "%-70s %7.2f MB: %5d ms of the worker (%4d ms/MB), "
                 . "%5d ms wall, status %s",
                 $name, $mb, $cpu, $cpu / ($mb || 1), $wall, $status // '-')
        if $ENV{TEST_VERBOSE} || $ENV{WORKER_TIME_REPORT};
    like($status // '', $ok, "$name: answered ($status)");
    ok(defined $glat, "$name: the ordinary agent on the same worker is "
       . 'answered' . (defined $glat ? sprintf(' (%.2f s)', $glat) : ''));
    ok(defined $gmsg && !$gmsg->{error_response},
       "$name: normally, not UNAVAILABLE (Redis did not time out)")
        or diag(explain($gmsg));
    SKIP: {
        skip 'worker time under valgrind, ASan or debug logging', 2 if $SLOW;
        cmp_ok($cpu, '<=', $budget,
               sprintf("%s (%.2f MB): %d ms of the worker, within %d ms/MB",
                       $name, $mb, $cpu, $BUDGET_MS_PER_MB));
        cmp_ok($glat // 99, '<=', 2 + 2 * $budget / 1000,
               "$name: within twice the budget and 2 s");
    }
}

my $STORED_OR_OVER = qr/^(200$|400 agent state exceeds opamp_max_agent_state)/;

for my $c (@cases) {
    my ($name, $make, $ok) = @$c;
    my $uid = random_uid();
    my $body = a2s($uid, $make->());
    cmp_ok(length $body, '<=', $MAX, "$name: fits the default 4m")
        or next;
    # a message whose status fields exceed opamp_max_agent_state (1m) is
    # refused after the scan, the merge and the decode: the worker's
    # whole cost; /state takes it into Redis
    my ($cpu, $status, $wall, $glat, $gmsg) = measure_http($body);
    check($name, length $body, $cpu, $status, $wall, $glat, $gmsg,
          $ok // $STORED_OR_OVER);
}

# what is stored: the largest status fields the worker deflates and
# copies for Redis (health, compressed), 4 MB at opamp_max_agent_state 4m
{
    my $name = 'health of 4 MB stored (deflated) at opamp_max_agent_state 4m';
    my $h = '';
    my $i = 0;
    while (length $h < $ROOM - 200) {
        $h .= fld(6, fld(1, sprintf('c%07d', $i++))
                     . fld(2, fvar(1, 1) . fld(4, 'StatusOK ' x 14)));
    }
    my $uid = random_uid();
    my $body = a2s($uid, fld(5, fvar(1, 1) . $h));
    my @r = measure_http($body, -path => '/state');
    check($name, length $body, @r, qr/^200$/);

    # the admin API shows it: inflated, decoded, written as JSON
    $name = 'the admin API showing that agent (4 MB of health as JSON)';
    my $cpu0 = worker_cpu_ms();
    my $t0 = time;
    my ($as, $ah, $ab) = $t->http_post('', -method => 'GET', -timeout => 60,
                                       -path => '/admin/agents/'
                                                . uid_text($uid));
    my $wall = (time - $t0) * 1000;
    my $g0 = good_heartbeat();
    my ($glat, $gmsg) = good_answer($g0, 30);
    my $cpu = worker_cpu_ms() - $cpu0;
    like($ab, qr/"c0000000"/, "$name: the health is shown");
    check($name . ' (' . int(length($ab) / 1024) . ' KB)', length $body,
          $cpu, $as, $wall, $glat, $gmsg, qr/^200$/);
}

# incompressible status fields: the deflate that saves nothing
{
    my $name = 'health of 4 MB of random bytes stored at '
               . 'opamp_max_agent_state 4m';
    my $random = pack('N*', map { int rand 2**32 } 1 .. ($ROOM - 64) / 4);
    my $body = a2s(random_uid(), fld(5, fvar(1, 1)
                                        . fld(7, kv('k', fld(7, $random)))));
    my @r = measure_http($body, -path => '/state');
    check($name, length $body, @r, qr/^200$/);
}

# a gzip bomb up to the limit: 4 MB inflated from a few KB
{
    my $name = 'gzip body inflating to 4 MB (one string)';
    my $plain = a2s(random_uid(), $cases[8][1]->());
    gzip(\$plain => \my $gz) or die $GzipError;
    my @r = measure_http($gz, 'Content-Encoding' => 'gzip');
    check($name . ', ' . length($gz) . ' bytes sent', length $plain, @r,
          $STORED_OR_OVER);
}

# a WebSocket message of 1 MB in one-byte fragments (7 MB of frames)
{
    # (64 KB where every frame's debug lines would be logged)
    my $size = $SLOW ? 64 * 1024 : $MB;
    my $name = 'WebSocket message of ' . $size / 1024
               . ' KB in one-byte fragments';
    # the bulk in the health's last_error: a description is bounded on
    # its own (65,536 bytes, t/79-redis-time.t)
    my $msg = "\x00" . a2s(random_uid(),
                           fld(5, fvar(1, 1) . fld(3, 'f' x ($size - 64))));
    my $ws = OpAMPFleet->connect_ws(port => $t->port);
    # mask 0: the payload goes as it is
    my $frames = "\x02\x81\0\0\0\0" . substr($msg, 0, 1);
    $frames .= join '', map { "\x00\x81\0\0\0\0" . $_ }
                        split //, substr($msg, 1, length($msg) - 2);
    $frames .= "\x80\x81\0\0\0\0" . substr($msg, -1);
    my $cpu0 = worker_cpu_ms();
    my $t0 = time;
    my $off = 0;
    while ($off < length $frames) {
        my $n = syswrite($ws->sock, $frames, length($frames) - $off, $off);
        die "write: $!\n" unless defined $n;
        $off += $n;
    }
    my $g0 = good_heartbeat();
    my $r = $ws->recv_msg(60);
    my $wall = (time - $t0) * 1000;
    my ($glat, $gmsg) = good_answer($g0, 30);
    my $cpu = worker_cpu_ms() - $cpu0;
    my $m = defined $r ? $t->s2a($r) : undef;
    check($name, length $msg, $cpu,
          defined $m ? ($m->{error_response} ? 'error' : 'answered') : undef,
          $wall, $glat, $gmsg, qr/^answered$/);
    $ws->close;
}

unlike($t->error_log, qr/timed out|exited on signal/,
       'no Redis timeout, no worker died');

$t->done;
done_testing();
