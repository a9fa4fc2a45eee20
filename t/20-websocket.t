#!/usr/bin/perl

# The WebSocket transport (RFC 6455 and the spec's message format):
# handshake rules, framing, fragmentation, control frames, close codes,
# server push over Redis pub/sub, takeover and duplicate uids, reload,
# agent timeout.  After each bad input, the same worker still serves.

use strict;
use warnings;

use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use IO::Socket::INET;
use IO::Select;
use Socket;
use Time::HiRes qw(time sleep);

use OpAMPTest;
use OpAMPFleet;

my $t = OpAMPTest->new;
$t->start_redis;
$t->start_nginx('
        location = /short {
            opamp;
            opamp_heartbeat_interval 1s;
            opamp_agent_timeout 2s;
        }', workers => 1, location => '
            opamp_max_message_size 4k;');

my $DESC = 'agent_description { identifying_attributes { key: '
           . '"service.name" value { string_value: "ws" } } }';

sub msg {
    my ($uid, $text) = @_;
    return $t->a2s('instance_uid: "' . uid_escape($uid) . '" ' . $text);
}

sub agent {
    return OpAMPFleet->connect_ws(port => $t->port, @_);
}

# any frame, every knob
sub raw_frame {
    my (%o) = @_;
    my $payload = $o{payload} // '';
    my $len = length $payload;
    my $b0 = (($o{fin} // 1) ? 0x80 : 0) | ($o{rsv} // 0) | $o{op};
    my $mask = $o{mask} // 1;
    my $h = chr($b0);
    if ($len < 126) { $h .= chr(($mask ? 0x80 : 0) | $len) }
    elsif ($len < 65536) { $h .= chr(($mask ? 0x80 : 0) | 126) . pack('n', $len) }
    else { $h .= chr(($mask ? 0x80 : 0) | 127) . pack('Q>', $len) }
    return $h . $payload unless $mask;
    my $k = 'abcd';
    return $h . $k . ($payload ^ substr($k x ($len / 4 + 1), 0, $len));
}

sub read_frame {
    my ($ag, $secs) = @_;
    my $sel = IO::Select->new($ag->sock);
    my $deadline = time + ($secs // 5);
    for (;;) {
        my ($op, $p) = $ag->_take_frame;
        return ($op, $p) if defined $op;
        my $left = $deadline - time;
        return () if $left <= 0 || !$sel->can_read($left);
        $ag->feed or return ('eof');
    }
}

sub close_code_of {
    my ($ag, $secs) = @_;
    for (1 .. 10) {
        my ($op, $p) = read_frame($ag, $secs);
        return undef unless defined $op;
        return 'eof' if $op eq 'eof';
        return unpack('n', $p) if $op == 8;
    }
    return undef;
}

sub still_serves {
    my ($after) = @_;
    my $uid = random_uid();
    my $ag = eval { agent() };
    my $ok = 0;
    if ($ag) {
        $ag->send_msg(msg($uid, "sequence_num: 0 capabilities: 1 $DESC"));
        my $r = $ag->recv_msg(5);
        $ok = defined $r && index($r, "\x0a\x10" . $uid) == 0;
        $ag->close;
    }
    ok($ok, "after $after the worker still serves another agent");
}

sub handshake {
    my ($req) = @_;
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                  PeerPort => $t->port, Proto => 'tcp');
    syswrite($s, $req);
    my $resp = '';
    my $sel = IO::Select->new($s);
    while ($sel->can_read(5)) {
        my $n = sysread($s, $resp, 65536, length $resp);
        last unless $n;
        last if $resp =~ /\r\n\r\n/ && $resp !~ /^HTTP\/1\.1 101/;
    }
    return $resp;
}

my @workers = $t->worker_pids;
my $KEY = 'dGhlIHNhbXBsZSBub25jZQ==';
my $H = "Host: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n";

# --- handshake -------------------------------------------------------------

my $resp = handshake("GET /v1/opamp HTTP/1.1\r\n$H"
                     . "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: $KEY\r\n\r\n");
like($resp, qr/^HTTP\/1\.1 101 /, '101 Switching Protocols');
like($resp, qr/^Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK\+xOo=\r$/m,
     'the RFC 6455 example accept value');

$resp = handshake("GET /v1/opamp HTTP/1.1\r\n$H"
                  . "Sec-WebSocket-Version: 13\r\n\r\n");
like($resp, qr/^HTTP\/1\.1 400 /, 'no Sec-WebSocket-Key: 400');
like($resp, qr/Sec-WebSocket-Key/, 'naming the missing header');
still_serves('a handshake without a key');

$resp = handshake("GET /v1/opamp HTTP/1.1\r\n$H"
                  . "Sec-WebSocket-Version: 12\r\nSec-WebSocket-Key: $KEY\r\n\r\n");
like($resp, qr/^HTTP\/1\.1 426 /, 'version 12: 426');
like($resp, qr/^Sec-WebSocket-Version: 13\r$/m, 'offering version 13');

$resp = handshake("GET /v1/opamp HTTP/1.0\r\n$H"
                  . "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: $KEY\r\n\r\n");
like($resp, qr/^HTTP\/1\.1 400 /, 'HTTP/1.0 upgrade: 400');

$resp = handshake("GET /v1/opamp HTTP/1.1\r\nHost: x\r\n"
                  . "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: $KEY\r\n\r\n");
like($resp, qr/^HTTP\/1\.1 400 /, 'no Upgrade header: 400');

# --- messaging ---------------------------------------------------------------

my $u1 = random_uid();
my $a1 = agent();
syswrite($a1->sock, raw_frame(op => 2, payload => "\x00"
                              . msg($u1, "sequence_num: 0 capabilities: 1 $DESC")));
my ($op, $p) = read_frame($a1);
is($op, 2, 'the reply is a binary frame');
is(substr($p, 0, 1), "\x00", 'starting with the OpAMP header 0');
like($t->s2a_text(substr($p, 1)), qr/^capabilities: \d+$/m,
     'then a ServerToAgent');
ok(index($p, "\x0a\x10" . $u1) == 1, 'with the agent\'s instance_uid');

my $st = $t->agent($u1);
is($st->{connected}, 1, 'connected 1');
is($st->{transport}, 'websocket', 'transport websocket');
like($st->{conn}, qr/^.+:$workers[0]:\d+$/, 'conn names host, worker and '
     . 'connection');
is($st->{worker_pid}, $workers[0], 'worker_pid');
like($st->{expires_ms}, qr/^\d{13}$/, 'expires_ms');

# the request is let go once the 101 is out: its access log line is
# written while the WebSocket is open, and the client header buffers are
# freed; a big header (a large header buffer) and a message sent right
# behind the handshake, in the same packet, must survive that
{
    my $u = random_uid();
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                  PeerPort => $t->port, Proto => 'tcp');
    syswrite($s, "GET /v1/opamp?big HTTP/1.1\r\n$H"
             . 'X-Big: ' . ('b' x 3000) . "\r\n"
             . "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: $KEY\r\n\r\n"
             . raw_frame(op => 2, payload => "\x00"
                         . msg($u, "sequence_num: 0 capabilities: 1 $DESC")));
    my $buf = '';
    my $sel = IO::Select->new($s);
    while ($buf !~ /\r\n\r\n/s && $sel->can_read(5)) {
        sysread($s, $buf, 65536, length $buf) or last;
    }
    like($buf, qr/^HTTP\/1\.1 101 /, 'big header and a message behind the '
         . 'handshake: 101');
    $buf =~ s/^.*?\r\n\r\n//s;
    while (length($buf) < 2 && $sel->can_read(5)) {
        sysread($s, $buf, 65536, length $buf) or last;
    }
    my $need = 2 + (ord(substr($buf, 1, 1)) & 0x7f);
    while (length($buf) < $need && $sel->can_read(5)) {
        sysread($s, $buf, 65536, length $buf) or last;
    }
    ok(index($buf, "\x0a\x10" . $u) == 3, 'the message behind the '
       . 'handshake is answered');
    my $log = '';
    $t->wait_for(sub {
        open my $fh, '<', $t->dir . '/logs/access.log' or return 0;
        local $/; $log = <$fh>;
        return $log =~ m{"GET /v1/opamp\?big HTTP/1\.1" 101 };
    }, 5);
    like($log, qr{"GET /v1/opamp\?big HTTP/1\.1" 101 },
         'the 101 is in access.log while the WebSocket is open');
    syswrite($s, raw_frame(op => 2, payload => "\x00"
                           . msg($u, "sequence_num: 1 capabilities: 1")));
    $buf = '';
    while (length($buf) < 2 && $sel->can_read(5)) {
        sysread($s, $buf, 65536, length $buf) or last;
    }
    is(ord(substr($buf, 0, 1)), 0x82, 'and the connection goes on serving');
    is($t->agent($u)->{sequence_num}, 1, 'its next message is persisted');
    close $s;
}

# fragmented: three frames with a ping between them
my $m = "\x00" . msg($u1, 'sequence_num: 1 capabilities: 1');
my $third = int(length($m) / 3);
syswrite($a1->sock, raw_frame(op => 2, fin => 0, payload => substr($m, 0, $third))
                    . raw_frame(op => 9, payload => 'ping!')
                    . raw_frame(op => 0, fin => 0,
                                payload => substr($m, $third, $third))
                    . raw_frame(op => 0, payload => substr($m, 2 * $third)));
($op, $p) = read_frame($a1);
is($op, 10, 'a ping between fragments is answered with a pong');
is($p, 'ping!', 'carrying the ping\'s payload');
($op, $p) = read_frame($a1);
is($op, 2, 'the fragmented message is answered');
is($t->agent($u1)->{sequence_num}, 1, 'and was processed whole');

syswrite($a1->sock, raw_frame(op => 9, payload => ''));
($op, $p) = read_frame($a1);
is($op, 10, 'an empty ping gets a pong');

syswrite($a1->sock, raw_frame(op => 8, payload => pack('n', 1000) . 'bye'));
($op, $p) = read_frame($a1);
is($op, 8, 'a close is answered with a close');
is(unpack('n', $p), 1000, 'echoing the code');
is((read_frame($a1, 5))[0], 'eof', 'then the server closes the TCP '
   . 'connection');
ok($t->wait_for(sub { ($t->agent($u1)->{connected} // '') eq '0' }, 5),
   'after the close the agent is marked disconnected');

my $u2 = random_uid();
my $a2 = agent();
$a2->send_msg(msg($u2, "sequence_num: 0 capabilities: 1 $DESC"));
$a2->recv_msg(5);
$a2->send_msg(msg($u2, 'sequence_num: 1 capabilities: 1 agent_disconnect {}'));
$a2->recv_msg(5);
is($t->agent($u2)->{connected}, 0, 'agent_disconnect: connected 0');
$a2->close;

# --- bad frames ---------------------------------------------------------------

my @bad = (
    [ 'an unmasked frame', raw_frame(op => 2, mask => 0, payload => "\x00x"),
      1002 ],
    [ 'a text frame', raw_frame(op => 1, payload => 'hello'), 1003 ],
    [ 'reserved bits', raw_frame(op => 2, rsv => 0x40, payload => "\x00"),
      1002 ],
    [ 'a control frame over 125 bytes',
      raw_frame(op => 9, payload => 'p' x 126), 1002 ],
    [ 'a fragmented control frame', raw_frame(op => 9, fin => 0, payload => 'p'),
      1002 ],
    [ 'a continuation without a start', raw_frame(op => 0, payload => 'x'),
      1002 ],
    [ 'an unknown opcode', raw_frame(op => 3, payload => 'x'), 1002 ],
    [ 'a message over opamp_max_message_size',
      raw_frame(op => 2, payload => "\x00" . ('x' x 5000)), 1009 ],
    [ 'fragments adding up over the limit',
      raw_frame(op => 2, fin => 0, payload => 'x' x 3000)
      . raw_frame(op => 0, payload => 'x' x 3000), 1009 ],
    [ 'a close code 999', raw_frame(op => 8, payload => pack('n', 999)),
      1002 ],
);

for my $b (@bad) {
    my ($name, $bytes, $code) = @$b;
    my $ag = agent();
    syswrite($ag->sock, $bytes);
    is(close_code_of($ag), $code, "$name: close $code");
    close $ag->sock;
    still_serves($name);
}

# --- bad messages: a ServerErrorResponse, the connection stays ---------------

my $u3 = random_uid();
my $a3 = agent();
$a3->send_msg(msg($u3, "sequence_num: 0 capabilities: 1 $DESC"));
$a3->recv_msg(5);

for my $b ([ 'OpAMP header 1', raw_frame(op => 2, payload => "\x01"
                                         . msg($u3, 'sequence_num: 1')),
             qr/header must be 0/ ],
           [ 'garbage protobuf', raw_frame(op => 2, payload => "\x00\xff\xff\xff"),
             qr/not a valid protobuf/ ],
           [ 'truncated protobuf',
             raw_frame(op => 2, payload => "\x00" . substr(msg($u3,
                 "sequence_num: 1 capabilities: 1 $DESC"), 0, 30)),
             qr/not a valid protobuf/ ],
           [ 'an instance_uid of 15 bytes',
             raw_frame(op => 2, payload => "\x00" . $t->a2s(
                 'instance_uid: "0123456789abcde" sequence_num: 1')),
             qr/16 bytes/ ],
           [ 'an empty message', raw_frame(op => 2, payload => ''),
             qr/header is missing/ ])
{
    my ($name, $bytes, $re) = @$b;
    syswrite($a3->sock, $bytes);
    my $r = $a3->recv_msg(5);
    my $text = defined $r ? $t->s2a_text($r) : '';
    like($text, qr/type: ServerErrorResponseType_BadRequest/,
         "$name: ServerErrorResponse BAD_REQUEST");
    like($text, $re, "$name: with a reason");
}

$a3->send_msg(msg($u3, 'sequence_num: 1 capabilities: 1'));
my $r = $a3->recv_msg(5);
ok(defined $r && $t->s2a_text($r) !~ /error_response/,
   'the connection goes on after bad messages');

# --- server push: kick over Redis pub/sub ------------------------------------

$st = $t->agent($u3);
$t->redis('PUBLISH', $st->{channel}, 'kick ' . uid_text($u3) . ' '
          . $st->{conn});
is(close_code_of($a3), 1008, 'kick on the worker channel: close 1008');
close $a3->sock;

# --- takeover and duplicates ---------------------------------------------------

my $u4 = random_uid();
my $a4 = agent();
$a4->send_msg(msg($u4, "sequence_num: 0 capabilities: 1 $DESC"));
$a4->recv_msg(5);
$a4->send_msg(msg($u4, 'sequence_num: 1 capabilities: 1'));
$a4->recv_msg(5);
my $old_conn = $t->agent($u4)->{conn};

# a second agent claims the uid without continuing the sequence
my $dup = agent();
$dup->send_msg(msg($u4, 'sequence_num: 0 capabilities: 1 agent_description '
                   . '{ identifying_attributes { key: "service.name" value '
                   . '{ string_value: "impostor" } } }'));
$r = $dup->recv_msg(5) // '';
my $pos = index($r, "\x42\x12\x0a\x10");
ok($pos >= 0, 'a duplicate uid gets agent_identification with a new uid');
my $nu = substr($r, $pos + 4, 16);
isnt($nu, $u4, 'a different one');
like($t->decode('AgentDescription', $t->agent($u4)->{description}),
     qr/"ws"/, 'the original agent\'s state is intact');
is($t->agent($u4)->{conn}, $old_conn, 'and its connection still holds it');
$dup->send_msg($t->a2s('instance_uid: "' . uid_escape($nu) . '" '
                       . 'sequence_num: 1 capabilities: 1'));
like($t->s2a_text($dup->recv_msg(5) // ''), qr/^flags: 1$/m,
     'under its new uid the duplicate is a new agent (full state asked)');
$dup->close;

# the same agent reconnecting (sequence continues) takes over
my $a5 = agent();
$a5->send_msg(msg($u4, 'sequence_num: 2 capabilities: 1'));
$r = $a5->recv_msg(5);
ok(defined $r && $t->s2a_text($r) !~ /agent_identification|error_response/,
   'a reconnect that continues the sequence is served');
is(close_code_of($a4), 1008, 'the stale connection is closed with 1008');
isnt($t->agent($u4)->{conn}, $old_conn, 'Redis names the new connection');
is($t->agent($u4)->{connected}, 1, 'still connected');

# --- agent timeout ---------------------------------------------------------------

my $u6 = random_uid();
my $a6 = agent(path => '/short');
# the server's last sign of the agent is reading this message: after we
# sent it, before its answer came; the close is due opamp_agent_timeout
# (2 s) after that
my $t_sent = time;
$a6->send_msg(msg($u6, "sequence_num: 0 capabilities: 1 $DESC"));
$a6->recv_msg(5);
my $t0 = time;
my $code;
while (time - $t0 < 8) {
    my ($o, $pl) = read_frame($a6, 1);
    next unless defined $o;
    last if $o eq 'eof';
    if ($o == 8) { $code = unpack 'n', $pl; last }
    # pings are answered by recv_msg's loop only; stay silent here
}
my $t_closed = time;
is($code, 1000, 'a silent agent is closed with 1000 after opamp_agent_timeout');
cmp_ok($t_closed - $t_sent, '>=', 1.995,
       sprintf('not before opamp_agent_timeout (%.3f s after its message)',
               $t_closed - $t_sent));
cmp_ok($t_closed - $t0, '<', 2.5, 'and not much after it');
ok($t->wait_for(sub { ($t->agent($u6)->{connected} // '') eq '0' }, 5),
   'and marked disconnected');

# an agent that answers pings stays
my $u7 = random_uid();
my $a7 = agent(path => '/short');
$a7->send_msg(msg($u7, "sequence_num: 0 capabilities: 1 $DESC"));
$a7->recv_msg(5);
ok(!defined $a7->recv_msg(3.5) && !$a7->{closed},
   'an agent that answers pings is kept past the timeout');
$a7->close;

# --- a slow reader: the send queue limit, the send timeout ---------------------------

# a second server with a tiny socket buffer, so that unread replies pile up
# in nginx instead of the kernel
my $slow_port = OpAMPTest::free_port();
{
    my $conf = $t->conf_text('', workers => 1, location => '
            opamp_max_message_size 4k;', http => "
    server {
        listen 127.0.0.1:$slow_port sndbuf=4k;
        location = /limit {
            opamp;
            opamp_send_queue_limit 64k;
        }
        location = /timeout {
            opamp;
            opamp_send_timeout 2s;
        }
    }");
    open my $f, '>', "$t->{dir}/nginx.conf" or die;
    print $f $conf;
    close $f;
    $t->reload;
}

my $big = 'b' x 100000;
$t->redis('HSET', 'opamp:config:group:slow', selector => 'service.name=slow',
          priority => 1, hash => 'ab' x 32, 'file:big.txt' => $big);
$t->redis('ZADD', 'opamp:groups', 1, 'slow');

sub slow_agent {
    my ($path) = @_;
    my $uid = random_uid();
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                  PeerPort => $slow_port, Proto => 'tcp');
    setsockopt($s, Socket::SOL_SOCKET(), Socket::SO_RCVBUF(), 4096);
    syswrite($s, "GET $path HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                 . "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                 . "Sec-WebSocket-Key: $KEY\r\n\r\n");
    my $head = '';
    sysread($s, $head, 4096) while $head !~ /\r\n\r\n/;
    # a member of the group: each change pushes 100 KB it will not read
    syswrite($s, raw_frame(op => 2, payload => "\x00" . msg($uid,
        'sequence_num: 0 capabilities: 3 agent_description { '
        . 'identifying_attributes { key: "service.name" value { '
        . 'string_value: "slow" } } }')));
    return ($s, $uid);
}

# reads everything the server still sends, fast, up to EOF; the code of
# the close frame at the end of it (server frames are not masked)
sub close_code_after_drain {
    my ($s, $secs) = @_;
    my $deadline = time + $secs;
    my $in = '';
    my $sel = IO::Select->new($s);
    while (time < $deadline && $sel->can_read($deadline - time)) {
        my $n = sysread($s, $in, 1 << 20, length $in);
        last unless $n;
    }
    my $code;
    while (length $in >= 2) {
        my ($b0, $b1) = unpack 'CC', $in;
        my ($len, $off) = ($b1 & 0x7f, 2);
        if ($len == 126) { $len = unpack 'n', substr($in, 2, 2); $off = 4 }
        elsif ($len == 127) { $len = unpack 'Q>', substr($in, 2, 8); $off = 10 }
        last if length $in < $off + $len;
        my $p = substr($in, $off, $len);
        substr($in, 0, $off + $len) = '';
        $code = length $p >= 2 ? unpack('n', $p) : 1005 if ($b0 & 0x0f) == 8;
    }
    return $code // 'none';
}

sub closed_by_server {
    my ($s, $secs) = @_;
    my $deadline = time + $secs;
    # drain slowly: only EOF or a reset tells that nginx closed
    while (time < $deadline) {
        my $buf;
        my $n = sysread($s, $buf, 65536);
        return 1 if !defined $n || $n == 0;
        sleep 0.05;
    }
    return 0;
}

my ($s1, $su1) = slow_agent('/limit');
sleep 0.5;
for my $i (1 .. 4) {
    $t->redis('HSET', 'opamp:config:group:slow', hash => sprintf('%064x', $i));
    $t->redis('INCR', 'opamp:config_version');
    $t->redis('PUBLISH', 'opamp:fleet', 'config');
}
ok($t->wait_for(sub { $t->error_log =~ /opamp_send_queue_limit, closing/ },
                10),
   'an agent that does not read is closed past opamp_send_queue_limit');
is(close_code_after_drain($s1, 10), 1008,
   'once it reads again, what was queued ends with a close frame 1008');
ok($t->wait_for(sub { ($t->agent($su1)->{connected} // '') eq '0' }, 5),
   'and it is marked disconnected');

my $t_slow = time;
my ($s2, $su2) = slow_agent('/timeout');
sleep 0.5;
$t->redis('HSET', 'opamp:config:group:slow', hash => 'cd' x 32);
$t->redis('INCR', 'opamp:config_version');
$t->redis('PUBLISH', 'opamp:fleet', 'config');
ok($t->wait_for(sub { $t->error_log =~ /opamp: send timed out/ }, 10),
   'a stalled send ends after opamp_send_timeout');
# the first stalled send comes after this agent connected: the timeout
# ends 2 s after it at the soonest
cmp_ok(time - $t_slow, '>=', 1.995, sprintf('not before opamp_send_timeout '
       . '(%.3f s after the agent connected)', time - $t_slow));
ok(closed_by_server($s2, 10), 'closing the connection');
still_serves('slow readers');

$t->redis('DEL', 'opamp:config:group:slow');
$t->redis('ZREM', 'opamp:groups', 'slow');
@workers = $t->worker_pids;

# --- reload: 1001 -----------------------------------------------------------------

my $u8 = random_uid();
my $a8 = agent();
$a8->send_msg(msg($u8, "sequence_num: 0 capabilities: 1 $DESC"));
$a8->recv_msg(5);
kill 'HUP', $t->nginx_pid;
is(close_code_of($a8, 10), 1001, 'nginx reload closes WebSocket agents '
   . 'with 1001');
ok($t->wait_for(sub { $t->workers_ready(1) && !grep { $_ == $workers[0] }
                                                  $t->worker_pids }, 10),
   'new workers took over');
still_serves('a reload');

$t->done;
done_testing;
