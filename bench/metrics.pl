#!/usr/bin/perl
# bench/metrics.pl PORT PATH COUNT: COUNT GETs of PATH over one keep-alive
# connection to 127.0.0.1:PORT; prints "p50_us=... p99_us=... bytes=..."
use strict;
use warnings;
use IO::Socket::INET;
use Time::HiRes qw(time);

my ($port, $path, $count) = @ARGV;
$count = 1000 if !$count || $count > 100000;
my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port,
                              Proto => 'tcp', Timeout => 5)
    or die "connect: $!\n";
my (@t, $bytes);
for (1 .. $count) {
    my $t0 = time;
    syswrite($s, "GET $path HTTP/1.1\r\nHost: bench\r\n\r\n");
    my $buf = '';
    my ($need, $head);
    while (1) {
        my $n = sysread($s, $buf, 65536, length $buf) or die "read: $!\n";
        if (!defined $head && (my $i = index($buf, "\r\n\r\n")) >= 0) {
            $head = substr($buf, 0, $i + 4, '');
            ($need) = $head =~ /Content-Length:\s*(\d+)/i;
            die "no Content-Length\n" unless defined $need;
        }
        last if defined $head && length $buf >= $need;
    }
    die "not 200: $head\n" unless $head =~ m{^HTTP/1\.1 200};
    $bytes = length $buf;
    push @t, (time - $t0) * 1e6;
}
@t = sort { $a <=> $b } @t;
printf "p50_us=%d p99_us=%d bytes=%d\n", $t[@t / 2], $t[int(@t * 0.99)],
       $bytes;
