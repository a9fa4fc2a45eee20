#!/usr/bin/perl

# opamp_redis (docs/directives.md): a Redis connection that fails is made
# again "with a backoff from 100 ms up to 5 s (with jitter)".  A fake
# Redis of ours accepts every connection, reads its first command and
# hangs up; each worker's pub/sub link names its worker in its SUBSCRIBE,
# so its attempts are timed one by one (Time::HiRes, on our side of the
# socket).  The n-th wait must lie within the documented jitter of a
# quarter around min(100 ms * 2^n, 5 s): never below, and above only by
# a bounded overhead for the reconnect itself.

use strict;
use warnings;

use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use IO::Socket::INET;
use IO::Select;
use POSIX ();
use Time::HiRes qw(time sleep);

use OpAMPTest;

my $t = OpAMPTest->new;
my $log = $t->dir . '/attempts';

my $listen = IO::Socket::INET->new(LocalAddr => '127.0.0.1',
                                   LocalPort => $t->redis_port,
                                   Proto => 'tcp', Listen => 64,
                                   ReuseAddr => 1)
    or die "listen on " . $t->redis_port . ": $!\n";

# (1, arguments) for a whole command at the start of $b, else (0)
sub resp_command {
    my ($b) = @_;
    return 0 unless $b =~ /^\*(\d+)\r\n/;
    my ($want, $off, @a) = ($1, length("*$1\r\n"));
    for (1 .. $want) {
        return 0 unless substr($b, $off) =~ /^\$(\d+)\r\n/;
        my $len = $1;
        $off += length("\$$len\r\n");
        return 0 if length($b) < $off + $len + 2;
        push @a, substr($b, $off, $len);
        $off += $len + 2;
    }
    return (1, @a);
}

# the fake Redis, a child of ours: every first command is logged with the
# time it arrived, then the connection is closed; bounded to 90 s
my $fake = fork() // die "fork: $!\n";
if ($fake == 0) {
    # not holding the TAP pipe: prove must not wait for this child
    open STDOUT, '>', '/dev/null';
    open STDERR, '>&', \*STDOUT;
    open my $out, '>', $log or POSIX::_exit(1);
    $out->autoflush(1);
    my $sel = IO::Select->new($listen);
    my %buf;
    my $end = time + 90;
    while (time < $end) {
        for my $s ($sel->can_read(0.5)) {
            if ($s == $listen) {
                my $c = $listen->accept or next;
                $sel->add($c);
                $buf{$c} = '';
                next;
            }
            my $n = sysread($s, $buf{$s}, 4096, length $buf{$s});
            my $b = $buf{$s};
            # one whole RESP command: *N then N bulk strings
            my ($whole, @a) = resp_command($buf{$s});
            next if !$whole && $n;
            my $now = time;
            if (@a && uc $a[0] eq 'SUBSCRIBE') {
                my ($pid) = ($a[1] // '') =~ /:(\d+)$/;
                printf $out "%.6f sub %s\n", $now, $pid // '?';
            } elsif (@a) {
                printf $out "%.6f cmd %s\n", $now, uc $a[0];
            }
            $sel->remove($s);
            delete $buf{$s};
            close $s;
        }
    }
    POSIX::_exit(0);
}
close $listen;

# a test that dies on the way leaves no fake Redis behind
my $parent = $$;
END {
    if ($$ == $parent && $fake && kill 0, $fake) {
        kill 'TERM', $fake;
        waitpid($fake, 0);
    }
}

$t->start_nginx('', workers => 2, no_wait_redis => 1);
my @w = $t->worker_pids;
is(scalar @w, 2, 'two workers');

sub attempts {
    my %by;
    open my $f, '<', $log or return \%by;
    while (<$f>) {
        my ($tm, $kind, $pid) = split;
        push @{ $by{$pid} }, $tm if $kind eq 'sub';
    }
    return \%by;
}

# nine attempts per worker: eight waits, the last two at the 5 s cap
my $N = 9;
ok($t->wait_for(sub {
       my $a = attempts();
       !grep { @{ $a->{$_} // [] } < $N } @w }, 40),
   "each worker's pub/sub link tried $N times")
    or diag(explain attempts());

kill 'TERM', $fake;
waitpid($fake, 0);
$fake = 0;

my @level = map { $_ < 6 ? 0.1 * 2**$_ : 5 } 0 .. $N - 2;
my $a = attempts();
my ($below, @all) = (0);
for my $pid (@w) {
    my @tm = @{ $a->{$pid} // [] }[0 .. $N - 1];
    next unless defined $tm[-1];
    for my $k (0 .. $N - 2) {
        my $d = $tm[$k + 1] - $tm[$k];
        my $b = $level[$k];
        push @all, $d;
        ok($d >= 0.75 * $b - 0.005,
           sprintf('worker %d, wait %d: %.3f s, not below %.3f s', $pid,
                   $k + 1, $d, 0.75 * $b));
        ok($d <= 1.25 * $b + 0.3,
           sprintf('worker %d, wait %d: %.3f s, not above %.3f s '
                   . '(+ 0.3 s for the reconnect)', $pid, $k + 1, $d,
                   1.25 * $b));
        $below++ if $d < 0.97 * $b;
    }
}

# with a jitter of a quarter either way, a wait below 97% of its level
# has odds of 0.44 each: none of 16 would be 1 in 500,000 (and without
# jitter every wait is its level plus the reconnect's own time)
ok($below > 0, "jitter: $below of " . scalar(@all) . ' waits below their '
   . 'level');

# the error log: one [error] per worker and connection for the outage
my @err = grep { /\[error\].*opamp: redis/ } split /\n/, $t->error_log;
is(scalar @err, 4, 'one [error] line per worker and connection, not one '
   . 'per attempt') or diag(join "\n", @err);

$t->done;
done_testing;
