#!/usr/bin/perl

# A Redis or a Sentinel that misbehaves (docs/directives.md,
# opamp_redis_max_reply and opamp_redis_timeout; docs/operations.md, "What
# happens when..."): a reply larger than the link's bound is refused
# before it grows the worker, a subscribed link (pub/sub, Sentinel) that
# stops mid-reply or stops answering PING is dropped after
# opamp_redis_timeout, garbage is a protocol error; each time the link is
# dropped with one [error] line, connected again with backoff, and agents
# are served again.
#
# nginx talks to a proxy of ours (a child process) in front of the real
# redis-server, which forwards faithfully until told to misbehave on the
# command or the pub/sub connection; two fake Sentinels of the same child
# name the real Redis as the primary, or misbehave when told.  Times are
# taken on our side of the sockets (Time::HiRes); memory is the worker's
# VmRSS and VmHWM (peak) in /proc.

use strict;
use warnings;

use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use IO::Socket::INET;
use IO::Select;
use IO::Handle;
use POSIX ();
use Fcntl;
use JSON::PP;
use Time::HiRes qw(time sleep);

use OpAMPTest;

my $T = 1;              # opamp_redis_timeout, seconds
my $STREAM = 128 << 20; # what a huge reply streams at most before it stops

my $t = OpAMPTest->new;
$t->start_redis;

my $PROXY = OpAMPTest::free_port();
my @SP = (OpAMPTest::free_port(), OpAMPTest::free_port());
my $events = $t->dir . '/events';

# (1, arguments, bytes used) for a whole command at the start of $b
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
    return (1, $off, @a);
}

# --- the child: proxy and fake Sentinels -------------------------------------

pipe(my $ctl_r, my $ctl_w) or die "pipe: $!\n";

my @listen = map {
    IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => $_,
                          Proto => 'tcp', Listen => 64, ReuseAddr => 1)
        or die "listen on $_: $!\n" } ($PROXY, @SP);

my $fake = fork() // die "fork: $!\n";
if ($fake == 0) {
    # not holding the TAP pipe: prove must not wait for this child
    open STDOUT, '>', '/dev/null';
    open STDERR, '>&', \*STDOUT;
    close $ctl_w;
    fake_main();
    POSIX::_exit(0);
}
close $ctl_r;
close $_ for @listen;
$ctl_w->autoflush(1);

# a test that dies on the way leaves no child behind
my $parent = $$;
END {
    local $?;
    if ($$ == $parent && $fake && kill 0, $fake) {
        kill 'TERM', $fake;
        waitpid($fake, 0);
    }
}

sub fake_main {
    # nginx drops a misbehaving link with bytes still unread, so the next
    # write here meets a reset: an error to note, not a signal to die of
    $SIG{PIPE} = 'IGNORE';
    open my $log, '>', $events or POSIX::_exit(1);
    $log->autoflush(1);
    my ($plisten, @slisten) = @listen;
    my %port_of = map { ($slisten[$_] => $SP[$_]) } 0 .. $#SP;
    my %smode = map { ($_ => 'good') } @SP;
    my $sel = IO::Select->new($ctl_r, @listen);
    my (%c, $ctl_buf);      # per socket: its state
    my $next_id = 0;
    my $end = time + 300;

    my $note = sub { printf $log "%.6f %s\n", time, join ' ', @_ };
    my $out = sub {
        my ($s, $bytes) = @_;
        $c{$s}{out} .= $bytes;
    };
    my $close = sub {
        my ($s, $why) = @_;
        my $st = $c{$s} or return;
        if ($st->{peer}) {
            my $p = $st->{peer};
            $sel->remove($p);
            delete $c{$p};
            close $p;
        }
        $note->('close', $st->{id}, $st->{kind}, "sent=$st->{sent}",
                $why) if $st->{client};
        $sel->remove($s);
        delete $c{$s};
        close $s;
    };
    # what a huge reply looks like on each kind of link
    my %huge = (
        cmd => "\$1073741824\r\n",
        sub => "*3\r\n\$7\r\nmessage\r\n\$4\r\nchan\r\n\$1073741824\r\n",
        sentinel => "\$1073741824\r\n");
    my $misbehave = sub {
        my ($s, $what) = @_;
        my $st = $c{$s};
        # the real Redis is out of it from now on
        if ($st->{peer}) {
            my $p = delete $st->{peer};
            $sel->remove($p);
            delete $c{$p};
            close $p;
        }
        $st->{dead} = 1;
        if ($what eq 'huge') {
            $out->($s, $huge{$st->{kind}});
            $st->{stream} = $STREAM;
        } elsif ($what eq 'array') {
            # many small elements: few bytes, many objects
            $out->($s, "*100000000\r\n");
            $st->{stream} = $STREAM / 4;
            $st->{chunk} = ':1' . "\r\n";
        } else {
            $out->($s, "!garbage\r\n");
        }
        $note->($what, $st->{id}, $st->{kind});
    };
    my $sentinel_cmd = sub {
        my ($s, @a) = @_;
        my $st = $c{$s};
        my $cmd = uc($a[0] // '');
        if ($cmd eq 'AUTH') {
            $out->($s, "+OK\r\n");
        } elsif ($cmd eq 'SENTINEL') {
            my $mode = $smode{$st->{port}};
            if ($mode eq 'huge' || $mode eq 'garbage') {
                $misbehave->($s, $mode);
                return;
            }
            my $p = $PROXY;
            $out->($s, "*2\r\n\$9\r\n127.0.0.1\r\n\$" . length($p)
                       . "\r\n$p\r\n");
            $note->('ask', $st->{id}, $st->{port});
        } elsif ($cmd eq 'SUBSCRIBE') {
            $out->($s, "*3\r\n\$9\r\nsubscribe\r\n\$14\r\n+switch-master"
                       . "\r\n:1\r\n");
            $note->('subscribed', $st->{id}, $st->{port});
        } elsif ($cmd eq 'PING') {
            if ($st->{mute}) {
                $note->('ping-swallowed', $st->{id}, $st->{kind});
                return;
            }
            $out->($s, "*2\r\n\$4\r\npong\r\n\$0\r\n\r\n");
            $note->('ping', $st->{id}, $st->{kind});
        } else {
            $out->($s, "-ERR unknown command\r\n");
        }
    };
    my $control = sub {
        my ($line) = @_;
        my ($what, $kind, @arg) = split ' ', $line;
        if ($what eq 'mode') {          # mode <port> <good|huge|garbage>
            $smode{$kind} = $arg[0];
            return;
        }
        for my $s (keys %c) {
            my $st = $c{$s};
            next unless $st->{client} && !$st->{dead}
                        && $st->{kind} eq $kind;
            if ($what eq 'huge' || $what eq 'garbage' || $what eq 'array') {
                $misbehave->($st->{sock}, $what);
            } elsif ($what eq 'mute') {
                $st->{mute} = 1;
            } elsif ($what eq 'stall') {
                $st->{stall} = 1;
            }
        }
    };

    while (time < $end) {
        my @w = grep { $c{$_} && (length $c{$_}{out} || $c{$_}{stream}) }
                map { $c{$_}{sock} } keys %c;
        my ($r, $wr) = IO::Select->select($sel, IO::Select->new(@w), undef,
                                          0.2);
        for my $s (@{ $wr // [] }) {
            my $st = $c{$s} or next;
            if (!length $st->{out} && $st->{stream}) {
                my $n = $st->{stream} < 65536 ? $st->{stream} : 65536;
                $st->{out} = substr(($st->{chunk} // 'x') x 65536, 0, $n);
                $st->{stream} -= $n;
            }
            my $n = syswrite($s, $st->{out});
            if (!defined $n) {
                $close->($s, "write: $!") unless $!{EAGAIN};
                next;
            }
            $st->{sent} += $n;
            substr($st->{out}, 0, $n, '');
        }
        for my $s (@{ $r // [] }) {
            if ($s == $ctl_r) {
                my $n = sysread($ctl_r, $ctl_buf, 4096, length($ctl_buf // ''));
                POSIX::_exit(0) unless $n;
                while ($ctl_buf =~ s/^([^\n]*)\n//) {
                    $control->($1);
                }
                next;
            }
            if (grep { $s == $_ } @listen) {
                my $a = $s->accept or next;
                $a->blocking(0);
                my $st = { sock => $a, id => ++$next_id, client => 1,
                           out => '', in => '', sent => 0, kind => '?' };
                $c{$a} = $st;
                $sel->add($a);
                if ($s == $plisten) {
                    my $srv = IO::Socket::INET->new(
                        PeerAddr => '127.0.0.1', PeerPort => $t->redis_port,
                        Proto => 'tcp') or do { close $a; next };
                    $srv->blocking(0);
                    $c{$srv} = { sock => $srv, peer => $a, out => '',
                                 sent => 0, id => $st->{id} };
                    $st->{peer} = $srv;
                    $sel->add($srv);
                    $note->('accept', $st->{id}, 'proxy');
                } else {
                    $st->{kind} = 'sentinel';
                    $st->{port} = $port_of{$s};
                    $st->{sentinel} = 1;
                    $note->('accept', $st->{id}, $st->{port});
                }
                next;
            }
            my $st = $c{$s} or next;
            my $buf = '';
            my $n = sysread($s, $buf, 65536);
            next if !defined $n && $!{EAGAIN};
            if (!$n) {
                if ($st->{client}) {
                    $close->($s, 'by nginx');
                } else {
                    $close->($st->{peer}, 'by redis');
                }
                next;
            }
            if (!$st->{client}) {
                # from the real Redis to nginx
                my $cl = $c{ $st->{peer} };
                next if !$cl || $cl->{dead};
                $out->($cl->{sock}, $buf);
                if ($cl->{kind} eq 'sub' && $buf =~ /pong/) {
                    $note->('pong', $cl->{id}, 'sub');
                    if ($cl->{stall}) {
                        # the start of a message, then nothing more
                        $out->($cl->{sock},
                               "*3\r\n\$7\r\nmessage\r\n\$4\r\nchan\r\n");
                        $cl->{dead} = 1;
                        $note->('stall', $cl->{id}, 'sub');
                    }
                }
                next;
            }
            next if $st->{dead};
            $st->{in} .= $buf;
            if ($st->{sentinel}) {
                while (my ($whole, $used, @a) = resp_command($st->{in})) {
                    last unless $whole;
                    substr($st->{in}, 0, $used, '');
                    $sentinel_cmd->($s, @a);
                    last if $st->{dead};
                }
                next;
            }
            if ($st->{kind} eq '?') {
                $st->{kind} = $st->{in} =~ /SUBSCRIBE/i ? 'sub' : 'cmd';
                $note->('kind', $st->{id}, $st->{kind});
            }
            my $pings = () = $buf =~ /PING/g;
            if ($st->{kind} eq 'sub' && $st->{mute}) {
                $note->('ping-swallowed', $st->{id}, 'sub') for 1 .. $pings;
                next;
            }
            $note->('ping', $st->{id}, $st->{kind})
                for $st->{kind} eq 'sub' ? 1 .. $pings : ();
            $out->($st->{peer}, $buf);
        }
        # what was queued goes out now where the socket takes it
        for my $st (values %c) {
            next unless length $st->{out};
            my $n = syswrite($st->{sock}, $st->{out});
            next unless $n;
            $st->{sent} += $n;
            substr($st->{out}, 0, $n, '');
        }
    }
}

sub ctl { print $ctl_w "@_\n" }

# [time, event, id, kind or port, rest]
sub events {
    open my $f, '<', $events or return [];
    return [ map { chomp; [ split / /, $_, 5 ] } <$f> ];
}

sub first_event {
    my ($want, $after, $pred) = @_;
    for my $e (@{ events() }) {
        next if $e->[0] < $after || $e->[1] ne $want;
        return $e if !$pred || $pred->($e);
    }
    return undef;
}

sub wait_event {
    my ($want, $after, $secs, $pred) = @_;
    my $e;
    $t->wait_for(sub { $e = first_event($want, $after, $pred) }, $secs);
    return $e;
}

# the worker's resident and peak memory, in kB; mem0 also starts a new
# peak (Linux: 5 to clear_refs)
sub mem0 {
    my ($pid) = @_;
    if (open my $f, '>', "/proc/$pid/clear_refs") {
        print $f "5\n";
        close $f;
    }
    return mem($pid);
}

sub mem {
    my ($pid) = @_;
    open my $f, '<', "/proc/$pid/status" or return (0, 0);
    my %m = map { /^(Vm\w+):\s+(\d+)/ ? ($1 => $2) : () } <$f>;
    return ($m{VmRSS} // 0, $m{VmHWM} // 0);
}

sub errors_since {
    my ($tt, $link) = @_;
    my $from = $tt->{log_mark} // 0;
    my $log = substr($tt->error_log, $from);
    return grep { /\[error\].*opamp: redis \Q$link\E connection/ }
           split /\n/, $log;
}

sub mark { $_[0]{log_mark} = length $_[0]->error_log }

# the [error] lines of a link since mark(), once there is one: a client
# may see the failure a moment before the line is written
sub errors {
    my ($tt, $link) = @_;
    $tt->wait_for(sub { errors_since($tt, $link) }, 5);
    return errors_since($tt, $link);
}

my $DESC = 'agent_description { identifying_attributes { key: '
           . '"service.name" value { string_value: "m" } } }';
my $agent = random_uid();
my $seq = 0;

sub served {
    my ($tt) = @_;
    return $tt->wait_for(sub {
        my ($s) = $tt->http_post($tt->a2s('instance_uid: "'
                   . uid_escape($agent) . '" sequence_num: ' . $seq++
                   . " capabilities: 1 $DESC"));
        ($s // 0) == 200 }, 10);
}

# --- the proxy: command and pub/sub links ------------------------------------

$t->start_nginx('
        location /admin/ {
            opamp_admin;
            client_max_body_size 4m;
        }', workers => 1, redis => "127.0.0.1:$PROXY",
        http => "opamp_redis_timeout ${T}s; opamp_redis_max_reply 1m;");
my ($w) = $t->worker_pids;
ok(served($t), 'through the proxy, an agent is served');

# a live pub/sub link that answers is kept: after a silence of
# opamp_redis_timeout it gets a PING, answers, and nothing is dropped
my $t0 = time;
sleep 3.5 * $T;
my @pings = grep { $_->[0] >= $t0 && $_->[1] eq 'ping' && $_->[3] eq 'sub' }
            @{ events() };
cmp_ok(scalar @pings, '>=', 2, 'an idle pub/sub link is sent PING after '
       . 'each silence of opamp_redis_timeout (' . scalar(@pings)
       . " in 3.5 s)");
cmp_ok(scalar @pings, '<=', 4, 'and not more often');
ok(first_event('pong', $t0), 'Redis answers it ["pong", ""]');
ok(!first_event('close', 0), 'and no link is dropped meanwhile');
is(scalar errors_since($t, 'pub/sub'), 0, 'nothing logged');

# a reply just under opamp_redis_max_reply is read; one over it drops the
# command link (a config read back by the admin API, from the real Redis)
my $json = JSON::PP->new->canonical;
my $other = uid_text(random_uid());
sub put_config {
    my ($size) = @_;
    my ($s) = $t->http_post($json->encode({ files => { 'c.yaml' => {
                  body => 'x' x $size } } }), -method => 'PUT',
                  -path => "/admin/configs/agents/$other",
                  'Content-Type' => 'application/json');
    return $s;
}
sub get_config {
    my ($s, $h, $b) = $t->http_post('', -method => 'GET',
                                    -path => "/admin/configs/agents/$other");
    my $d = eval { $json->decode($b) } // {};
    return ($s, length($d->{files}{'c.yaml'}{body} // ''));
}

is(put_config(900_000), 200, 'a config of 900,000 bytes is stored');
my ($s, $len) = get_config();
is($s, 200, 'opamp_redis_max_reply 1m: read back, a reply just under it');
is($len, 900_000, 'whole');
is(put_config(1_100_000), 200, 'a config of 1,100,000 bytes is stored');
mark($t);
($s) = get_config();
is($s, 503, 'read back, a reply over opamp_redis_max_reply: 503');
my @e = errors($t, 'command');
is(scalar @e, 1, 'one [error] line');
like($e[0] // '',
     qr/lost: a reply of more than 1048576 bytes \(opamp_redis_max_reply\);/,
     'that names the bound');
ok(served($t), 'agents are served again');
$t->http_post('', -method => 'DELETE',
              -path => "/admin/configs/agents/$other");

# a huge reply on the command link: a bulk string that promises 1 GB and
# streams; the worker reads no more than the bound and drops the link
my ($rss0) = mem0($w);
mark($t);
$t0 = time;
ctl('huge cmd');
my $huge = wait_event('huge', $t0, 5);
my $closed = $huge && wait_event('close', $t0, 10,
                                 sub { $_[0][2] eq $huge->[2] });
ok($closed, 'a huge reply on the command link: the link is dropped');
my ($sent) = (($closed // [])->[4] // '') =~ /sent=(\d+)/;
cmp_ok($sent // 0, '>=', 1 << 20, sprintf('after the proxy sent %.1f MB',
       ($sent // 0) / 1e6));
my ($rss1, $hwm1) = mem($w);
cmp_ok($hwm1 - $rss0, '<', 16 * 1024, sprintf('the worker\'s peak memory '
       . 'grew by %.1f MB at most (bound 1m, %d MB streamed at most)',
       ($hwm1 - $rss0) / 1024, $STREAM >> 20));
cmp_ok($rss1 - $rss0, '<', 8 * 1024, sprintf('and %.1f MB are still held',
       ($rss1 - $rss0) / 1024));
@e = errors($t, 'command');
is(scalar @e, 1, 'one [error] line');
like($e[0] // '', qr/lost: a reply of more than 1048576 bytes/,
     'that says why');
ok(served($t), 'reconnected: agents are served again');

# garbage on the command link: a protocol error
mark($t);
$t0 = time;
ctl('garbage cmd');
my $g = wait_event('garbage', $t0, 5);
ok($g && wait_event('close', $t0, 5, sub { $_[0][2] eq $g->[2] }),
   'garbage on the command link: dropped');
@e = errors($t, 'command');
is(scalar @e, 1, 'one [error] line');
like($e[0] // '', qr/lost: protocol error/, 'a protocol error');
ok(served($t), 'reconnected: agents are served again');

# an array that announces 100,000,000 elements and streams small ones:
# what hiredis makes of them counts, not only the bytes
($rss0) = mem0($w);
mark($t);
$t0 = time;
ctl('array cmd');
$huge = wait_event('array', $t0, 5);
$closed = $huge && wait_event('close', $t0, 10,
                              sub { $_[0][2] eq $huge->[2] });
ok($closed, 'an array of 100,000,000 elements on the command link: dropped')
    or diag(join "\n", map { "@$_" } @{ events() });
($sent) = (($closed // [])->[4] // '') =~ /sent=(\d+)/;
(undef, $hwm1) = mem($w);
cmp_ok($hwm1 - $rss0, '<', 8 * 1024, sprintf('peak memory grew by %.1f MB '
       . '(%.1f MB sent)', ($hwm1 - $rss0) / 1024, ($sent // 0) / 1e6));
like((errors($t, 'command'))[0] // '',
     qr/lost: a reply of more than 1048576 bytes/,
     'a reply over the bound');
ok(served($t), 'reconnected: agents are served again');

# a huge message on the pub/sub link: 64 KB at most
($rss0) = mem0($w);
mark($t);
$t0 = time;
ctl('huge sub');
$huge = wait_event('huge', $t0, 5);
$closed = $huge && wait_event('close', $t0, 10,
                              sub { $_[0][2] eq $huge->[2] });
ok($closed, 'a huge message on the pub/sub link: dropped')
    or diag(join "\n", map { "@$_" } @{ events() });
($sent) = (($closed // [])->[4] // '') =~ /sent=(\d+)/;
cmp_ok($sent // 0, '<', 16 << 20, sprintf('after %.2f MB', ($sent // 0)
       / 1e6));
(undef, $hwm1) = mem($w);
cmp_ok($hwm1 - $rss0, '<', 8 * 1024, sprintf('peak memory grew by %.1f MB',
       ($hwm1 - $rss0) / 1024));
@e = errors($t, 'pub/sub');
is(scalar @e, 1, 'one [error] line');
like($e[0] // '', qr/lost: a reply of more than 65536 bytes; retrying/,
     'that says why');
ok($t->wait_for(sub { $t->workers_ready(1) }, 10),
   'the pub/sub link is subscribed again');

# garbage on the pub/sub link
mark($t);
$t0 = time;
ctl('garbage sub');
$g = wait_event('garbage', $t0, 5);
ok($g && wait_event('close', $t0, 5, sub { $_[0][2] eq $g->[2] }),
   'garbage on the pub/sub link: dropped');
like((errors($t, 'pub/sub'))[0] // '', qr/lost: protocol error/,
     'a protocol error');
ok($t->wait_for(sub { $t->workers_ready(1) }, 10), 'subscribed again');

# the pub/sub link stops in the middle of a message (right after a pong,
# so that the next PING is due only opamp_redis_timeout later): dropped
# opamp_redis_timeout after the first bytes, not at the PING's deadline
mark($t);
$t0 = time;
ctl('stall sub');
my $stall = wait_event('stall', $t0, 3 * $T + 2);
$closed = $stall && wait_event('close', $t0, 3 * $T + 2,
                               sub { $_[0][2] eq $stall->[2] });
ok($closed, 'a pub/sub link silent mid-message is dropped');
my $took = $closed ? $closed->[0] - $stall->[0] : -1;
cmp_ok($took, '>=', $T - 0.01, sprintf('after opamp_redis_timeout '
       . '(%.3f s), not sooner', $took));
cmp_ok($took, '<', $T + 0.6, 'and not at the PING\'s deadline (2 s)');
like((errors($t, 'pub/sub'))[0] // '',
     qr/lost: a reply still incomplete after 1000 ms/, 'logged as such');
ok($t->wait_for(sub { $t->workers_ready(1) }, 10), 'subscribed again');

# the pub/sub link stops answering PING: dropped opamp_redis_timeout
# after the PING
mark($t);
$t0 = time;
ctl('mute sub');
my $sw = wait_event('ping-swallowed', $t0, 3 * $T + 2);
my $sid = $sw ? $sw->[2] : -1;
$closed = $sw && wait_event('close', $t0, 3 * $T + 2,
                            sub { $_[0][2] eq $sid });
ok($closed, 'a pub/sub link that does not answer PING is dropped');
$took = $closed ? $closed->[0] - $sw->[0] : -1;
cmp_ok($took, '>=', $T - 0.01, sprintf('opamp_redis_timeout after the PING '
       . '(%.3f s), not sooner', $took));
cmp_ok($took, '<', $T + 0.6, 'and not much later');
like((errors($t, 'pub/sub'))[0] // '',
     qr/lost: no answer to PING within 1000 ms/, 'logged as such');
ok($t->wait_for(sub { $t->workers_ready(1) }, 10), 'subscribed again');
ok(served($t), 'agents are served');

# the PINGs' timer does not hold a graceful shutdown back
$t0 = time;
$t->stop_nginx;
cmp_ok(time - $t0, '<', 5, sprintf('nginx -s quit: the worker exits at once '
       . '(%.1f s)', time - $t0));

# --- fake Sentinels -----------------------------------------------------------

# (the Sentinels name the proxy as the primary; no opamp_redis_max_reply,
# a location whose opamp_max_message_size raises its default)
my $ts = OpAMPTest->new(redis_port => $t->redis_port);
$ts->start_nginx('', workers => 1,
                 redis => "sentinel://127.0.0.1:$SP[0],127.0.0.1:$SP[1]/m",
                 http => "opamp_redis_timeout ${T}s;",
                 location => 'opamp_max_message_size 40m;');
($w) = $ts->worker_pids;
ok(served($ts), 'behind the fake Sentinels, an agent is served');
ok(wait_event('subscribed', 0, 5), 'the Sentinel link is subscribed');

# a Sentinel sends a huge message, and the next ones a huge answer: each
# is dropped at 64 KB and the next Sentinel asked
($rss0) = mem0($w);
mark($ts);
$t0 = time;
ctl("mode $_ huge") for @SP;
ctl('huge sentinel');
ok($ts->wait_for(sub {
       my %hit = map { $_->[3] => 1 } grep {
           $_->[0] >= $t0 && $_->[1] eq 'accept' } @{ events() };
       $hit{$SP[0]} && $hit{$SP[1]} }, 10),
   'a huge reply: the link is dropped and the next Sentinel asked, and the '
   . 'next');
my @huge = grep { $_->[0] >= $t0 && $_->[1] eq 'huge' } @{ events() };
my %byid = map { $_->[2] => $_ } grep { $_->[1] eq 'close' } @{ events() };
ok(@huge >= 3 && !grep({ !$byid{$_->[2]} } @huge[0 .. 2]),
   'each huge reply ends with the link closed by nginx');
my $most = 0;
for my $h (@huge[0 .. 2]) {
    my ($n) = (($byid{ $h->[2] } // [])->[4] // '') =~ /sent=(\d+)/;
    $most = $n if ($n // 0) > $most;
}
cmp_ok($most, '<', 16 << 20, sprintf('after %.2f MB at most', $most / 1e6));
(undef, $hwm1) = mem($w);
cmp_ok($hwm1 - $rss0, '<', 8 * 1024, sprintf('peak memory grew by %.1f MB',
       ($hwm1 - $rss0) / 1024));
@e = errors($ts, 'sentinel');
is(scalar @e, 1, 'one [error] line for the outage');
like($e[0] // '', qr/lost: a reply of more than 65536 bytes/, 'that says why');
ok(served($ts), 'the primary\'s links stay: agents are served');
ctl("mode $SP[1] good");
$t0 = time;
ok(wait_event('subscribed', $t0, 10), 'a good Sentinel: subscribed again');

# garbage: the same
mark($ts);
$t0 = time;
ctl("mode $_ garbage") for @SP;
ctl('garbage sentinel');
ok($ts->wait_for(sub {
       my @gb = grep { $_->[0] >= $t0 && $_->[1] eq 'garbage' }
                @{ events() };
       my %port = map { $_->[3] => 1 } grep {
           $_->[0] >= $t0 && $_->[1] eq 'accept' } @{ events() };
       @gb >= 2 && $port{$SP[0]} }, 10),
   'garbage: dropped and the next Sentinel asked');
like((errors($ts, 'sentinel'))[0] // '', qr/lost: protocol error/,
     'a protocol error');
ctl("mode $SP[0] good");
$t0 = time;
ok(wait_event('subscribed', $t0, 10), 'a good Sentinel: subscribed again');

# a Sentinel that does not answer PING
mark($ts);
$t0 = time;
ctl('mute sentinel');
$sw = wait_event('ping-swallowed', $t0, 3 * $T + 2);
$sid = $sw ? $sw->[2] : -1;
$closed = $sw && wait_event('close', $t0, 3 * $T + 2,
                            sub { $_[0][2] eq $sid });
ok($closed, 'a Sentinel link that does not answer PING is dropped');
$took = $closed ? $closed->[0] - $sw->[0] : -1;
cmp_ok($took, '>=', $T - 0.01, sprintf('opamp_redis_timeout after the PING '
       . '(%.3f s)', $took));
cmp_ok($took, '<', $T + 0.6, 'and not much later');
like((errors($ts, 'sentinel'))[0] // '',
     qr/lost: no answer to PING/, 'logged as such');
$t0 = time;
ok(wait_event('subscribed', $t0, 10), 'subscribed again');
ok(served($ts), 'agents are served');

# opamp_redis_max_reply's default: 64m, or twice the largest
# opamp_max_message_size (40m here)
mark($ts);
$t0 = time;
ctl('huge cmd');
$huge = wait_event('huge', $t0, 5);
$closed = $huge && wait_event('close', $t0, 20,
                              sub { $_[0][2] eq $huge->[2] });
ok($closed, 'the default bound: a huge reply drops the command link');
($sent) = (($closed // [])->[4] // '') =~ /sent=(\d+)/;
cmp_ok($sent // 0, '>=', 80 << 20, sprintf('after %.1f MB were sent: twice '
       . 'opamp_max_message_size 40m', ($sent // 0) / (1 << 20)));
like((errors($ts, 'command'))[0] // '',
     qr/lost: a reply of more than 83886080 bytes \(opamp_redis_max_reply\)/,
     'the bound logged');
ok(served($ts), 'agents are served again');

$ts->done;
$t->done;
done_testing;
