package OpAMPTest;

# Test harness: a real redis-server and a real nginx with the module
# loaded, each on a free loopback port in a temporary directory.  Only
# core Perl.  Modeled on nginx-tests' lib/Test/Nginx.pm.
#
#   my $t = OpAMPTest->new;
#   $t->start_redis;
#   $t->start_nginx($server_text, workers => 2, location => '...');
#   ... $t->http_post($bytes), $t->redis('HGETALL', $key) ...
#   $t->done;     # stops both and checks the error log

use strict;
use warnings;

use Test::More;
use IO::Socket::INET;
use IO::Select;
use POSIX qw(WNOHANG);
use File::Temp qw(tempdir);
use File::Basename qw(dirname);
use Cwd qw(abs_path);
use Time::HiRes qw(time sleep);
use Exporter 'import';

use OpAMPFleet;

our @EXPORT = qw(uid_text random_uid uid_escape);

my $ROOT = abs_path(dirname(__FILE__) . '/../..');

sub uid_text { OpAMPFleet::uid_text(@_) }
sub random_uid { OpAMPFleet::random_uid() }
sub uid_escape { OpAMPFleet::uid_escape(@_) }

sub free_port {
    my $s = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0,
                                  Proto => 'tcp', Listen => 1, ReuseAddr => 1)
        or die "no free port: $!\n";
    my $p = $s->sockport;
    close $s;
    return $p;
}

sub new {
    my ($class, %o) = @_;
    my $dir = tempdir('opamp-test-XXXXXX', TMPDIR => 1,
                      CLEANUP => !$ENV{TEST_KEEP});
    mkdir "$dir/logs";
    mkdir "$dir/tmp";
    my $self = bless {
        dir => $dir,
        port => free_port(),
        redis_port => $o{redis_port} // free_port(),
        module => $ENV{NGINX_MODULE}
                  // "$ROOT/build/ngx_http_opamp_module.so",
        nginx => $ENV{NGINX} // '/usr/sbin/nginx',
        %o,
    }, $class;
    diag("test dir $dir") if $ENV{TEST_KEEP};
    return $self;
}

sub dir { $_[0]{dir} }
sub port { $_[0]{port} }
sub redis_port { $_[0]{redis_port} }

# --- Redis -------------------------------------------------------------

sub start_redis {
    my ($self) = @_;
    my $pid = fork() // die "fork: $!\n";
    if ($pid == 0) {
        open STDOUT, '>', "$self->{dir}/logs/redis.out";
        open STDERR, '>&', \*STDOUT;
        exec 'redis-server', '--bind', '127.0.0.1',
            '--port', $self->{redis_port}, '--save', '', '--appendonly', 'no',
            '--dir', $self->{dir};
        exit 127;
    }
    $self->{redis_pid} = $pid;
    $self->wait_for(sub { eval { $self->redis('PING') eq 'PONG' } }, 10)
        or die "redis-server did not start\n";
    return $self;
}

sub stop_redis {
    my ($self) = @_;
    my $pid = delete $self->{redis_pid} or return;
    delete $self->{rconn};
    kill 'TERM', $pid;
    waitpid($pid, 0);
}

sub _resp_read {
    my ($s) = @_;
    my $line = _readline($s);
    die "redis connection lost\n" unless defined $line;
    my $t = substr($line, 0, 1, '');
    return $line if $t eq '+';
    return 0 + $line if $t eq ':';
    return OpAMPTest::RedisError->new($line) if $t eq '-';
    if ($t eq '$') {
        return undef if $line < 0;
        my $data = _readn($s, $line + 2);
        return substr($data, 0, $line);
    }
    if ($t eq '*') {
        return undef if $line < 0;
        return [ map { _resp_read($s) } 1 .. $line ];
    }
    die "bad RESP type $t\n";
}

sub _readline {
    my ($s) = @_;
    my $buf = \${*$s}{resp_buf};
    $$buf //= '';
    while ((my $i = index($$buf, "\r\n")) < 0) {
        my $n = sysread($s, $$buf, 65536, length $$buf);
        return undef unless $n;
    }
    my $i = index($$buf, "\r\n");
    my $line = substr($$buf, 0, $i);
    substr($$buf, 0, $i + 2) = '';
    return $line;
}

sub _readn {
    my ($s, $len) = @_;
    my $buf = \${*$s}{resp_buf};
    while (length $$buf < $len) {
        my $n = sysread($s, $$buf, 65536, length $$buf);
        die "redis connection lost\n" unless $n;
    }
    return substr($$buf, 0, $len, '');
}

sub resp_command {
    return '*' . scalar(@_) . "\r\n"
           . join('', map { '$' . length($_) . "\r\n$_\r\n" } @_);
}

sub redis_connect {
    my ($self) = @_;
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                  PeerPort => $self->{redis_port},
                                  Proto => 'tcp', Timeout => 5)
        or die "redis connect: $!\n";
    binmode $s;
    return $s;
}

# one command; a Redis error dies
sub redis {
    my ($self, @cmd) = @_;
    my $s = $self->{rconn} //= $self->redis_connect;
    syswrite($s, resp_command(@cmd));
    my $r = _resp_read($s);
    die "redis $cmd[0]: $$r\n" if ref $r eq 'OpAMPTest::RedisError';
    return $r;
}

sub hgetall {
    my ($self, $key) = @_;
    my $r = $self->redis('HGETALL', $key);
    return { @$r };
}

sub agent {
    my ($self, $uid, $prefix) = @_;
    return $self->hgetall(($prefix // 'opamp:') . 'agent:{'
                          . uid_text($uid) . '}');
}

# a subscriber connection: returns a sub that waits for the next message
sub subscribe {
    my ($self, @channels) = @_;
    my $s = $self->redis_connect;
    syswrite($s, resp_command('SUBSCRIBE', @channels));
    _resp_read($s) for @channels;
    return sub {
        my ($t) = @_;
        my $buf = ${*$s}{resp_buf} // '';
        if ($buf eq '') {
            return undef unless IO::Select->new($s)->can_read($t // 5);
        }
        my $m = _resp_read($s);
        return ref $m eq 'ARRAY' ? [ $m->[1], $m->[2] ] : undef;
    };
}

# --- nginx -------------------------------------------------------------

sub conf_text {
    my ($self, $server, %o) = @_;
    my $d = $self->{dir};
    my $workers = $o{workers} // 1;
    my $prefix = $o{prefix} // 'opamp:';
    my $http = $o{http} // '';
    my $loc = $o{location} // '';
    my $main = $o{main} // '';
    return <<"EOF";
load_module $self->{module};
$main
worker_processes $workers;
daemon on;
master_process on;
error_log $d/logs/error.log info;
pid $d/logs/nginx.pid;
worker_shutdown_timeout 10s;

events {
    worker_connections 4096;
}

http {
    access_log $d/logs/access.log;
    client_body_temp_path $d/tmp/body;
    proxy_temp_path $d/tmp/proxy;
    fastcgi_temp_path $d/tmp/fastcgi;
    uwsgi_temp_path $d/tmp/uwsgi;
    scgi_temp_path $d/tmp/scgi;

    opamp_redis 127.0.0.1:$self->{redis_port};
    opamp_redis_prefix $prefix;
$http
    server {
        listen 127.0.0.1:$self->{port};

        location = /v1/opamp {
            opamp;
$loc
        }
$server
    }
}
EOF
}

sub start_nginx {
    my ($self, $server, %o) = @_;
    $self->{conf} = "$self->{dir}/nginx.conf";
    open my $f, '>', $self->{conf} or die;
    print $f $self->conf_text($server // '', %o);
    close $f;
    my $cmd = "$self->{nginx} -p $self->{dir}/ -c $self->{conf}";

    # TEST_NGINX_VALGRIND=1: every nginx process under memcheck, one log
    # per process; done() fails the test on any error they report
    if ($ENV{TEST_NGINX_VALGRIND}) {
        $cmd = "valgrind -q --leak-check=full"
               . " --errors-for-leak-kinds=definite --show-leak-kinds=definite"
               . " --suppressions=$ROOT/t/valgrind.supp"
               . " --log-file=$self->{dir}/logs/valgrind.%p.log $cmd";
    }

    my $out = `$cmd 2>&1`;
    die "nginx did not start: $out\n" if $?;
    $self->wait_for(sub { -s "$self->{dir}/logs/nginx.pid" }, 5)
        or die "no nginx pid file\n";
    $self->{nginx_pid} = $self->read_pid;
    my $n = $o{workers} // 1;
    $self->wait_for(sub { $self->workers_ready($n) },
                    $ENV{TEST_NGINX_VALGRIND} ? 60 : 10)
        or die "nginx workers did not subscribe to redis\n";
    return $self;
}

sub read_pid {
    my ($self) = @_;
    open my $f, '<', "$self->{dir}/logs/nginx.pid" or return undef;
    my $pid = <$f>;
    chomp $pid;
    return $pid;
}

sub nginx_pid { $_[0]{nginx_pid} }

sub worker_pids {
    my ($self) = @_;
    my $m = $self->{nginx_pid} or return ();
    my @p;
    for my $d (glob '/proc/[0-9]*') {
        open my $f, '<', "$d/stat" or next;
        my $stat = <$f>;
        next unless $stat;
        my ($pid, $ppid) = $stat =~ /^(\d+) \(.*\) \S (\d+)/;
        push @p, $pid if defined $ppid && $ppid == $m;
    }
    return sort { $a <=> $b } @p;
}

# every worker subscribed to its channel: its command link is up too, as
# both start together; checked by the channels Redis reports
sub workers_ready {
    my ($self, $n) = @_;
    my @w = $self->worker_pids;
    return 0 unless @w >= $n;
    my $ch = eval { $self->redis('PUBSUB', 'CHANNELS', '*worker:*') } || [];
    my %have = map { ($_ =~ /:(\d+)$/)[0] => 1 } @$ch;
    return !grep { !$have{$_} } @w;
}

sub reload {
    my ($self, %o) = @_;
    my @old = $self->worker_pids;
    kill 'HUP', $self->{nginx_pid};
    $self->wait_for(sub {
        my %old = map { $_ => 1 } @old;
        my @new = grep { !$old{$_} } $self->worker_pids;
        @new >= ($o{workers} // 1) && $self->workers_ready($o{workers} // 1)
    }, 10);
}

sub stop_nginx {
    my ($self) = @_;
    my $pid = delete $self->{nginx_pid} or return;
    kill 'QUIT', $pid;
    $self->wait_for(sub { !kill 0, $pid }, $ENV{TEST_NGINX_VALGRIND} ? 60 : 15)
        or do {
        kill 'TERM', $pid;
        $self->wait_for(sub { !kill 0, $pid }, 5);
    };
}

# runs nginx -t on a whole configuration text: (exit code, output)
sub nginx_t {
    my ($self, $conf) = @_;
    my $file = "$self->{dir}/test.conf";
    open my $f, '>', $file or die;
    print $f $conf;
    close $f;
    my $out = `$self->{nginx} -t -p $self->{dir}/ -c $file 2>&1`;
    return ($? >> 8, $out);
}

sub error_log {
    my ($self) = @_;
    open my $f, '<', "$self->{dir}/logs/error.log" or return '';
    local $/;
    return <$f>;
}

sub error_log_problems {
    my ($self) = @_;
    return grep { /\[(alert|crit|emerg)\]/ } split /\n/, $self->error_log;
}

sub done {
    my ($self) = @_;
    $self->stop_nginx;
    $self->stop_redis;
    my @p = $self->error_log_problems;
    ok(!@p, 'no [alert], [crit] or [emerg] in error.log')
        or diag(join "\n", @p);

    if ($ENV{TEST_NGINX_VALGRIND}) {
        my @v;
        for my $f (glob "$self->{dir}/logs/valgrind.*.log") {
            open my $fh, '<', $f or next;
            local $/;
            my $text = <$fh>;
            push @v, $text if $text =~ /\S/;
        }
        ok(!@v, 'valgrind reports no errors') or diag(join "\n", @v);
    }
}

sub DESTROY {
    my ($self) = @_;
    local $?;
    $self->stop_nginx;
    $self->stop_redis;
}

sub wait_for {
    my ($self, $cond, $secs) = @_;
    my $deadline = time + ($secs // 5);
    while (time < $deadline) {
        return 1 if $cond->();
        sleep 0.05;
    }
    return $cond->() ? 1 : 0;
}

# --- OpAMP -------------------------------------------------------------

sub a2s { my ($self, $text) = @_; OpAMPFleet::encode('AgentToServer', $text) }

sub s2a_text {
    my ($self, $bytes) = @_;
    OpAMPFleet::decode('ServerToAgent', $bytes);
}

sub decode { my ($self, $type, $b) = @_; OpAMPFleet::decode($type, $b) }

# plain HTTP POST to /v1/opamp: (status, {headers}, body)
sub http_post {
    my ($self, $body, %h) = @_;
    my $path = delete $h{-path} // '/v1/opamp';
    my $method = delete $h{-method} // 'POST';
    $h{'Content-Type'} //= 'application/x-protobuf';
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                  PeerPort => $self->{port}, Proto => 'tcp',
                                  Timeout => 5)
        or die "connect: $!\n";
    binmode $s;
    my $req = "$method $path HTTP/1.1\r\nHost: 127.0.0.1\r\n"
              . "Connection: close\r\n"
              . join('', map { "$_: $h{$_}\r\n" } sort keys %h)
              . 'Content-Length: ' . length($body) . "\r\n\r\n" . $body;
    syswrite($s, $req);
    my $resp = '';
    my $sel = IO::Select->new($s);
    while ($sel->can_read(10)) {
        my $n = sysread($s, $resp, 65536, length $resp);
        last unless $n;
    }
    my ($head, $rest) = split /\r\n\r\n/, $resp, 2;
    return (undef, {}, '') unless defined $head;
    my ($status) = $head =~ m{^HTTP/1\.\d (\d+)};
    my %hd;
    for (split /\r\n/, $head) {
        $hd{lc $1} = $2 if /^([^:]+):\s*(.*)$/;
    }
    $rest //= '';
    if (($hd{'transfer-encoding'} // '') =~ /chunked/i) {
        my $b = '';
        while ($rest =~ s/^([0-9a-fA-F]+)\r\n//) {
            my $len = hex $1;
            last if $len == 0;
            $b .= substr($rest, 0, $len, '');
            $rest =~ s/^\r\n//;
        }
        $rest = $b;
    }
    return ($status, \%hd, $rest);
}

package OpAMPTest::RedisError;

sub new { my ($c, $m) = @_; bless \$m, $c }

1;
