package OpAMPRedisHA;

# More Redis processes for the tests of t/85-89: primaries, replicas,
# Sentinels (redis-server --sentinel) and TLS servers, each a child of the
# test on a free loopback port in the test's directory, stopped by the pid
# it got when it started it (at the latest when the test ends).  Only core
# Perl.
#
#   my $ha = OpAMPRedisHA->new($t);       # $t: an OpAMPTest, for dir()
#   my $p = $ha->server(port => $port, args => [...]);   # pid
#   my $s = $ha->sentinel(port => $port, master => 'm',
#                         master_port => $p1, pass => 'x');
#   my $set = $ha->sentinel_set(pass => 'x');   # see below
#   $ha->cmd($port, @cmd)                 # one command; auth => 'pw'
#   $ha->spawn($log, @cmd)                # any other server: pid
#   $ha->signal($pid, 'KILL')  $ha->stop($pid)  $ha->reap($pid)

use strict;
use warnings;

use IO::Socket::INET;
use IO::Select;
use POSIX qw(WNOHANG);
use Time::HiRes qw(time sleep);

use Test::More;

use OpAMPTest;

my %PIDS;

END {
    local ($?, $@, $!);
    for my $pid (keys %PIDS) {
        next unless $PIDS{$pid} == $$;
        CORE::kill('KILL', $pid);
        waitpid($pid, 0);
    }
}

sub new {
    my ($class, $t) = @_;
    return bless { t => $t, dir => $t->dir }, $class;
}

sub spawn { my $self = shift; return $self->_spawn(@_) }

sub _spawn {
    my ($self, $log, @cmd) = @_;
    my $pid = fork() // die "fork: $!\n";
    if ($pid == 0) {
        open STDIN, '<', '/dev/null';
        open STDOUT, '>>', $log;
        open STDERR, '>&', \*STDOUT;
        exec @cmd or POSIX::_exit(127);
    }
    $PIDS{$pid} = $$;
    return $pid;
}

# a redis-server; %o: port, bind (default 127.0.0.1), args (more
# arguments), wait (a port to PING, default port; 0: no wait), pass (for
# that PING)
sub server {
    my ($self, %o) = @_;
    my $port = $o{port};
    my $dir = "$self->{dir}/redis-$port";
    mkdir $dir;
    my $bind = $o{bind} // '127.0.0.1';
    $dir .= "-$bind" if $o{bind};
    mkdir $dir;
    my $pid = $self->_spawn("$self->{dir}/logs/redis-$bind-$port.log",
        'redis-server', '--bind', $bind, '--port', $port,
        '--save', '', '--appendonly', 'no', '--daemonize', 'no',
        '--dir', $dir, @{ $o{args} // [] });
    my $wait = $o{wait} // ($o{bind} ? "$bind:$port" : $port);
    if ($wait) {
        $self->{t}->wait_for(sub {
            my $r = eval { $self->cmd($wait, 'PING', auth => $o{pass}) };
            defined $r && $r eq 'PONG';
        }, 10) or die "redis-server did not start on port $wait\n";
    }
    return $pid;
}

# a Sentinel watching master_port under the name master
sub sentinel {
    my ($self, %o) = @_;
    my $port = $o{port};
    my $conf = "$self->{dir}/sentinel-$port.conf";
    open my $f, '>', $conf or die "$conf: $!\n";
    print $f <<"EOF";
port $port
bind 127.0.0.1
daemonize no
dir $self->{dir}
sentinel monitor $o{master} 127.0.0.1 $o{master_port} ${\ ($o{quorum} // 2)}
sentinel down-after-milliseconds $o{master} ${\ ($o{down_after} // 1000)}
sentinel failover-timeout $o{master} 10000
sentinel parallel-syncs $o{master} 1
EOF
    print $f "requirepass $o{pass}\n" if $o{pass};
    close $f;
    my $pid = $self->_spawn("$self->{dir}/logs/sentinel-$port.log",
                            'redis-server', $conf, '--sentinel');
    $self->{t}->wait_for(sub {
        my $r = eval { $self->cmd($port, 'PING', auth => $o{pass}) };
        defined $r && $r eq 'PONG';
    }, 10) or die "redis-sentinel did not start on port $port\n";
    return $pid;
}

# Redis as production runs it: a primary on the test's Redis port, a
# replica of it and three Sentinels monitoring it as master (default
# "opamp", password pass), ok() once the Sentinels know each other and
# the replica (30 s at most).  Returns a hash: primary, replica (pids),
# replica_port, sentinels (pids), sentinel_ports, url (the sentinel://
# URL of opamp_redis)
sub sentinel_set {
    my ($self, %o) = @_;
    my $master = $o{master} // 'opamp';
    my $p1 = $self->{t}->redis_port;
    my %set = (replica_port => OpAMPTest::free_port(),
               sentinel_ports => [ map { OpAMPTest::free_port() } 1 .. 3 ]);
    my @sp = @{ $set{sentinel_ports} };
    $set{primary} = $self->server(port => $p1);
    $set{replica} = $self->server(port => $set{replica_port},
                                  args => [ '--replicaof', '127.0.0.1', $p1 ]);
    $set{sentinels} = [ map { $self->sentinel(port => $_, master => $master,
                                              master_port => $p1,
                                              pass => $o{pass}) } @sp ];
    ok($self->{t}->wait_for(sub {
           for my $s (@sp) {
               my $r = eval { $self->cmd($s, 'SENTINEL', 'sentinels', $master,
                                         auth => $o{pass}) } // [];
               my $rp = eval { $self->cmd($s, 'SENTINEL', 'replicas',
                                          $master, auth => $o{pass}) } // [];
               return 0 unless @$r == 2 && @$rp == 1;
           }
           1 }, 30),
       'three Sentinels know each other and the replica');
    $set{url} = 'sentinel://' . join(',', map { "127.0.0.1:$_" } @sp)
                . "/$master";
    return \%set;
}

# one command on a new connection to a port or "host:port" (AUTH first
# with auth => password);
# scalar, array ref, undef for nil; an error reply dies with its text
sub cmd {
    my ($self, $port, @cmd) = @_;
    my $auth;
    if (@cmd >= 2 && $cmd[-2] eq 'auth') {
        $auth = $cmd[-1];
        splice @cmd, -2;
    }
    my $host = $port =~ s/^(.*):// ? $1 : '127.0.0.1';
    my $s = IO::Socket::INET->new(PeerAddr => $host, PeerPort => $port,
                                  Proto => 'tcp', Timeout => 3)
        or die "connect to $port: $!\n";
    binmode $s;
    ${*$s}{resp_buf} = '';
    my @r;
    for my $c ($auth ? (['AUTH', $auth], [@cmd]) : ([@cmd])) {
        my $req = OpAMPTest::resp_command(@$c);
        syswrite($s, $req) == length $req or die "write to $port: $!\n";
        push @r, OpAMPTest::_resp_read($s);
    }
    close $s;
    my $r = $r[-1];
    die "redis $cmd[0] on $port: $$r\n" if ref $r eq 'OpAMPTest::RedisError';
    return $r;
}

sub signal {
    my ($self, $pid, $sig) = @_;
    return unless $PIDS{$pid};
    CORE::kill($sig // 'TERM', $pid);
}

# TERM, reaped (KILL after 10 s)
sub stop {
    my ($self, $pid) = @_;
    return unless delete $PIDS{$pid};
    CORE::kill('TERM', $pid);
    my $deadline = time + 10;
    while (time < $deadline) {
        return if waitpid($pid, WNOHANG) == $pid;
        sleep 0.05;
    }
    CORE::kill('KILL', $pid);
    waitpid($pid, 0);
}

# a small DNS server on UDP loopback for nginx's resolver: it answers A
# queries for $name with the address in the file $file (read on every
# query; "nx": NXDOMAIN), TTL 1 s, and appends each query's name to
# $file.log.  Returns (pid, port).
sub dns {
    my ($self, $name, $file) = @_;
    my $sock = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0,
                                     Proto => 'udp')
        or die "dns socket: $!\n";
    my $port = $sock->sockport;
    my $pid = fork() // die "fork: $!\n";
    if ($pid == 0) {
        for (;;) {
            my $q = '';
            defined $sock->recv($q, 512) or next;
            next if length $q < 17;
            my ($id) = unpack 'n', $q;
            my ($off, @l) = (12);
            while ($off < length $q and my $len = ord substr($q, $off, 1)) {
                push @l, substr($q, $off + 1, $len);
                $off += $len + 1;
            }
            my $qname = lc join '.', @l;
            my ($qtype) = unpack 'n', substr($q, $off + 1, 2);
            my $question = substr($q, 12, $off + 5 - 12);
            open my $f, '<', $file;
            my $addr = <$f> // 'nx';
            chomp $addr;
            close $f;
            open my $lg, '>>', "$file.log";
            print $lg "$qname $qtype\n";
            close $lg;
            my ($flags, @an) = (0x8180);
            if ($qname ne $name || $addr eq 'nx') {
                $flags = 0x8183;
            } elsif ($qtype == 1) {
                @an = (pack('n n n N n', 0xc00c, 1, 1, 1, 4)
                       . pack('C4', split /\./, $addr));
            }
            $sock->send(pack('n6', $id, $flags, 1, scalar @an, 0, 0)
                        . $question . join '', @an);
        }
    }
    close $sock;
    $PIDS{$pid} = $$;
    return ($pid, $port);
}

# reaps a child that was killed
sub reap {
    my ($self, $pid) = @_;
    delete $PIDS{$pid};
    waitpid($pid, 0);
}

1;
