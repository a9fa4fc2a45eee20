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

# the sockets a worker holds: its listener, its Redis links, and the
# connections of its clients
sub worker_sockets {
    my $n = 0;
    for my $pid ($t->worker_pids) {
        for my $fd (glob "/proc/$pid/fd/*") {
            my $l = readlink($fd) // '';
            $n++ if $l =~ /^socket:/;
        }
    }
    return $n;
}

my $idle = worker_sockets();
ok($idle >= 3, "an idle worker holds its listener and Redis links ($idle "
   . 'sockets)');

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

# every one of those connections is closed: the worker holds exactly what
# it held before them (our own last request is answered and closed too)
my $open;
$t->wait_for(sub { ($open = worker_sockets()) == $idle }, 10);
is($open, $idle, 'no connection of a reset agent is kept open: the worker '
   . 'holds the sockets it held before');

$t->done;
done_testing;
