#!/usr/bin/perl

# Plain HTTP agents that reset their connection while the module waits for
# Redis: the reply's write fails, and the connection must still be closed
# (not left open until the worker exits, which nginx reports as an
# "open socket left" alert at shutdown).

use strict;
use warnings;

use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use IO::Socket::INET;
use Socket qw(SOL_SOCKET SO_LINGER);

use OpAMPTest;

my $t = OpAMPTest->new;
$t->start_redis;
$t->start_nginx('', workers => 1);

for my $i (1 .. 50) {
    my $body = $t->a2s('instance_uid: "' . uid_escape(random_uid())
                       . '" sequence_num: 0 capabilities: 1');
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                  PeerPort => $t->port, Proto => 'tcp')
        or die "connect: $!";
    syswrite($s, "POST /v1/opamp HTTP/1.1\r\nHost: x\r\n"
                 . "Content-Type: application/x-protobuf\r\n"
                 . 'Content-Length: ' . length($body) . "\r\n\r\n" . $body);
    # a reset, at once: the reply is still on its way through Redis
    setsockopt($s, SOL_SOCKET, SO_LINGER, pack('ii', 1, 0));
    close $s;
}

my $uid = random_uid();
my ($st) = $t->http_post($t->a2s('instance_uid: "' . uid_escape($uid)
                                 . '" sequence_num: 0 capabilities: 1'));
is($st, 200, 'after 50 agents that reset, the worker still serves');

# every one of those connections is closed: none is open but ours
my $open = 0;
for my $pid ($t->worker_pids) {
    for my $fd (glob "/proc/$pid/fd/*") {
        my $l = readlink($fd) // '';
        $open++ if $l =~ /^socket:/;
    }
}
cmp_ok($open, '<', 20, "no connection of a reset agent is kept open ($open "
       . 'sockets: listener, Redis links, channel)');

$t->done;
done_testing;
