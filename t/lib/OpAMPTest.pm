package OpAMPTest;

# Test harness: a real redis-server and a real nginx with the module
# loaded, each on a free loopback port in a temporary directory.  Only
# core Perl.  Modeled on nginx-tests' lib/Test/Nginx.pm.
#
#   use OpAMPTest;                # exports uid_hex uid_text random_uid
#                                 # uid_escape
#   my $t = OpAMPTest->new;       # temp dir, free ports
#   $t->start_redis;
#   $t->start_nginx($server_text, workers => 2, location => '...',
#                   http => '...', prefix => 'opamp:', main => '...');
#   my ($status, $headers, $body) = $t->http_post($t->a2s('...'));
#   my $m = $t->s2a($body);       # ServerToAgent as a Perl hashref
#   $t->redis('HGET', $key, $field); $t->hgetall($key);
#   $t->done; done_testing;       # stops both, checks the error log
#
# The API:
#
#   OpAMPTest->new(%o)          redis_port => share another test's Redis,
#                               redis_auth => [user, password] or
#                               [password]: the harness's own connections
#                               authenticate so
#   dir port redis_port module  accessors
#   start_redis(@args) stop_redis  a redis-server child of this process;
#                               @args are more redis-server options
#   redis(@cmd)                 one command; scalar, array ref, undef for
#                               nil; dies on an error reply
#   redis_nodie(@cmd)           the same, an error reply is returned as an
#                               OpAMPTest::RedisError ($$r is its text)
#   hgetall($key)               hashref
#   replicas_caught_up(%o)      every replica acked all writes; pause =>
#                               $ms pauses writes first (for a failover)
#   agent($uid[, $prefix])      hgetall of <prefix>agent:{<uid text>} and
#                               of <prefix>status:{<uid text>} (fields
#                               stored compressed inflated), with shared
#                               content (<field>_ref) read in place
#   agent_key($uid[, $prefix])  that first key; status_key() the second
#   stored_field($value)        a status field as the agent sent it
#   subscribe(@channels)        sub ($timeout) -> [channel, payload]|undef
#   conf_text($server, %o)      the nginx.conf text; %o: workers, prefix,
#                               http, location, main, redis
#   write_conf($server, %o)     writes it to <dir>/nginx.conf
#   start_nginx($server, %o)    write_conf, start, wait until the port
#                               accepts and every worker's Redis
#                               connections are up (no_wait_redis => 1
#                               skips that; skipped too when Redis is down)
#   nginx_pid worker_pids       master; its live workers (from /proc)
#   workers_ready($n)           every worker connected to Redis
#   reload(%o)                  HUP, wait for the new workers; true if so
#   stop_nginx                  QUIT, then TERM
#   nginx_t($conf_text)         (exit code, output) of nginx -t
#   nginx_cmd(@args)            the command line that runs nginx (for -s)
#   error_log error_log_problems   the log; its [alert|crit|emerg] lines
#   done                        stop all, ok() on error_log_problems
#   wait_for($sub, $secs)       poll every 50 ms, bounded; true if met
#   encode($type, $text) a2s($text)          protoc --encode
#   decode($type, $bytes) s2a_text($bytes)   protoc --decode (text)
#   parse($type, $bytes) s2a($bytes)         decoded into Perl data
#   http_post($body, %headers)  ($status, {lc headers}, $body); -path,
#                               -method, -port, -timeout, -local (the
#                               source address)
#   write_file($file, $text) file_text($file)   (exported on request)
#   OpAMPTest::make_certs($dir, name => 'extension line', ...)
#                               test CAs ca, ca2 and leaf certificates
#
# Environment: NGINX (default /usr/sbin/nginx), NGINX_MODULE (default
# build/ngx_http_opamp_module.so of this repository), TEST_KEEP=1 keeps the
# temporary directory, TEST_NGINX_VALGRIND=1 runs nginx under memcheck,
# TEST_NGINX_ASAN=1 runs nginx with the AddressSanitizer runtime preloaded
# (for a module built with -fsanitize=address,undefined: make test-asan),
# TEST_NGINX_DEBUG=1 logs at the debug level (error_log ... debug: make
# test-debug).
#
# Every wait is bounded; a child process is only ever signalled by the pid
# this harness got when it started it.

use strict;
use warnings;
use feature qw(state);

use Test::More;
use IO::Socket::INET;
use IO::Select;
use POSIX qw(WNOHANG);
use File::Temp qw(tempdir);
use File::Basename qw(dirname);
use Cwd qw(abs_path);
use Compress::Zlib ();
use Time::HiRes qw(time sleep);
use Exporter 'import';
use Scalar::Util qw(weaken);

use OpAMPFleet;

our @EXPORT = qw(uid_hex uid_text random_uid uid_escape);
our @EXPORT_OK = qw(write_file file_text);

our %LIVE;

my $ROOT = abs_path(dirname(abs_path(__FILE__)) . '/../..');

sub root { $ROOT }

# --- instance uids -----------------------------------------------------

# 16 bytes -> 32 lowercase hex digits
sub uid_hex { return unpack 'H*', $_[0] }

# 16 bytes -> canonical 8-4-4-4-12 lowercase text
sub uid_text {
    my $h = unpack 'H*', $_[0];
    return join '-', substr($h, 0, 8), substr($h, 8, 4), substr($h, 12, 4),
        substr($h, 16, 4), substr($h, 20);
}

# 16 random bytes
sub random_uid {
    if (open my $f, '<:raw', '/dev/urandom') {
        my $b = '';
        read($f, $b, 16) == 16 and return $b;
    }
    return join '', map { chr(int rand 256) } 1 .. 16;
}

# any bytes as a textproto string body: every byte as an octal escape
sub uid_escape {
    return join '', map { sprintf '\\%03o', $_ } unpack 'C*', $_[0];
}

# --- files and certificates ------------------------------------------------

sub write_file {
    my ($file, $text) = @_;
    open my $f, '>', $file or die "$file: $!\n";
    print $f $text;
    close $f;
}

# a file's whole text, '' when it is not there (yet)
sub file_text {
    my ($file) = @_;
    open my $f, '<', $file or return '';
    local $/;
    return <$f> // '';
}

# test certificates in $dir (EC P-256, two days): two CAs, ca.crt and
# ca2.crt (the second verifies nothing of the first), and for each
# name => extension line of %leaf, <name>.crt and <name>.key signed by
# ca (e.g. server => 'subjectAltName=IP:127.0.0.1'); keys readable by
# all, as the nginx and redis-server of a test may run as other users
sub make_certs {
    my ($dir, %leaf) = @_;
    my $ssl = sub {
        my ($cmd) = @_;
        my $out = `cd $dir && openssl $cmd 2>&1`;
        die "openssl $cmd: $out\n" if $?;
    };
    my $ec = '-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes';
    $ssl->("req -x509 $ec -keyout $_.key -out $_.crt -days 2 "
           . "-subj '/CN=opamp test $_'") for 'ca', 'ca2';
    for my $name (sort keys %leaf) {
        write_file("$dir/$name.ext", "$leaf{$name}\n");
        $ssl->("req $ec -keyout $name.key -out $name.csr "
               . "-subj '/CN=opamp $name'");
        $ssl->("x509 -req -in $name.csr -CA ca.crt -CAkey ca.key "
               . "-CAcreateserial -out $name.crt -days 2 "
               . "-extfile $name.ext");
    }
    chmod 0644, glob "$dir/*.key";
}

# A port the kernel hands out for LocalPort => 0 comes from the ephemeral
# range, which every outgoing connection (a client to Redis, nginx to
# Redis) also draws from: between this check and nginx's bind() one of
# them could take it ("Address already in use", once in a CI run).  So
# the ports come from below that range, chosen at random, each at most
# once per test process, and checked free by a bind.
sub free_port {
    state %given;
    state $below = do {
        my $low = 32768;
        if (open my $f, '<', '/proc/sys/net/ipv4/ip_local_port_range') {
            my ($l) = split ' ', scalar <$f>;
            $low = $l if defined $l && $l =~ /^\d+$/ && $l > 12000;
        }
        $low;
    };
    for (1 .. 1000) {
        my $p = 10000 + int rand($below - 10000);
        next if $given{$p};
        my $s = IO::Socket::INET->new(LocalAddr => '127.0.0.1',
                                      LocalPort => $p, Proto => 'tcp',
                                      Listen => 1, ReuseAddr => 1)
            or next;
        close $s;
        $given{$p} = 1;
        return $p;
    }
    die "no free port below $below\n";
}

# %o: redis_port (share another test's Redis), port, module, nginx
sub new {
    my ($class, %o) = @_;
    my $dir = tempdir('opamp-test-XXXXXX', TMPDIR => 1,
                      CLEANUP => !$ENV{TEST_KEEP});
    mkdir "$dir/logs";
    mkdir "$dir/tmp";
    # nginx started as root runs its workers as another user, which must
    # reach the temporary files (request bodies) under the directory
    chmod 0755, $dir, "$dir/tmp";
    # the sanitizers open their report files in the worker, after it has
    # become that other user
    chmod 01777, "$dir/logs" if $ENV{TEST_NGINX_ASAN};
    my $self = bless {
        dir => $dir,
        port => free_port(),
        redis_port => free_port(),
        module => $ENV{NGINX_MODULE}
                  // "$ROOT/build/ngx_http_opamp_module.so",
        nginx => $ENV{NGINX} // '/usr/sbin/nginx',
        owner => $$,
        %o,
    }, $class;
    $self->{redis_port} //= free_port();
    diag("test dir $dir") if $ENV{TEST_KEEP};
    weaken($LIVE{"$self"} = $self);
    return $self;
}

# every instance still alive (%LIVE, declared at the top); END stops their
# processes before File::Temp removes their directories: a test that dies
# leaves nothing running

END {
    local ($?, $@, $!);
    for my $t (grep { defined } values %LIVE) {
        next unless ($t->{owner} // 0) == $$;
        eval { $t->stop_nginx; $t->stop_redis };
    }
}

sub dir { $_[0]{dir} }
sub port { $_[0]{port} }
sub redis_port { $_[0]{redis_port} }
sub module { $_[0]{module} }

sub wait_for {
    my ($self, $cond, $secs) = @_;
    my $deadline = time + ($secs // 5);
    while (time < $deadline) {
        return 1 if $cond->();
        sleep 0.05;
    }
    return $cond->() ? 1 : 0;
}

# waits (bounded) for a child of ours to exit; true when reaped
sub _reap {
    my ($pid, $secs) = @_;
    my $deadline = time + $secs;
    while (time < $deadline) {
        my $r = waitpid($pid, WNOHANG);
        return 1 if $r == $pid || $r < 0;
        sleep 0.05;
    }
    return 0;
}

# --- Redis -------------------------------------------------------------

sub start_redis {
    my ($self, @extra) = @_;
    die "redis already started\n" if $self->{redis_pid};
    my $pid = fork() // die "fork: $!\n";
    if ($pid == 0) {
        open STDOUT, '>>', "$self->{dir}/logs/redis.log";
        open STDERR, '>&', \*STDOUT;
        exec 'redis-server', '--bind', '127.0.0.1',
            '--port', $self->{redis_port}, '--save', '', '--appendonly', 'no',
            '--daemonize', 'no', '--dir', $self->{dir}, @extra
            or POSIX::_exit(127);
    }
    $self->{redis_pid} = $pid;
    delete $self->{rconn};
    $self->wait_for(sub {
        my $r = eval { $self->redis('PING') };
        return defined $r && $r eq 'PONG';
    }, 10) or die "redis-server did not start on port $self->{redis_port}\n";
    return $self;
}

sub redis_pid { $_[0]{redis_pid} }

sub stop_redis {
    my ($self) = @_;
    delete $self->{rconn};
    my $pid = delete $self->{redis_pid} or return;
    kill 'TERM', $pid;
    _reap($pid, 10) or do { kill 'KILL', $pid; _reap($pid, 5) };
}

sub resp_command {
    return '*' . scalar(@_) . "\r\n"
           . join('', map { '$' . length($_) . "\r\n$_\r\n" } @_);
}

sub _fill {
    my ($s) = @_;
    my $buf = \${*$s}{resp_buf};
    return 0 unless IO::Select->new($s)->can_read(10);
    my $n = sysread($s, $$buf, 65536, length $$buf);
    return $n;
}

sub _readline {
    my ($s) = @_;
    my $buf = \${*$s}{resp_buf};
    $$buf //= '';
    while ((my $i = index($$buf, "\r\n")) < 0) {
        return undef unless _fill($s);
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
        die "redis connection lost\n" unless _fill($s);
    }
    return substr($$buf, 0, $len, '');
}

# one RESP reply: scalar, array ref, undef (nil) or OpAMPTest::RedisError
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

sub redis_connect {
    my ($self) = @_;
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                  PeerPort => $self->{redis_port},
                                  Proto => 'tcp', Timeout => 5)
        or die "redis connect to port $self->{redis_port}: $!\n";
    binmode $s;
    ${*$s}{resp_buf} = '';
    if ($self->{redis_auth}) {
        syswrite($s, resp_command('AUTH', @{ $self->{redis_auth} }));
        my $r = _resp_read($s);
        die "redis AUTH: $$r\n" if ref $r eq 'OpAMPTest::RedisError';
    }
    # named, so that workers_ready() does not count it as nginx's
    syswrite($s, resp_command('CLIENT', 'SETNAME', 'opamp-test'));
    _resp_read($s);
    return $s;
}

# one command on the harness's own connection (opened on first use and
# again after a lost connection).  Binary safe.  Returns a scalar, an
# array ref, or undef for nil; a Redis error reply dies with its text.
sub redis {
    my ($self, @cmd) = @_;
    my $r = $self->redis_nodie(@cmd);
    die "redis $cmd[0]: $$r\n" if ref $r eq 'OpAMPTest::RedisError';
    return $r;
}

# the same, but a Redis error reply is returned as an
# OpAMPTest::RedisError object (a blessed ref to the message: $$r) instead
# of dying; test with OpAMPTest::is_redis_error($r)
sub redis_nodie {
    my ($self, @cmd) = @_;
    for my $try (1, 2) {
        my $s = $self->{rconn} //= $self->redis_connect;
        my $r = eval {
            my $req = resp_command(@cmd);
            my $off = 0;
            while ($off < length $req) {
                my $n = syswrite($s, $req, length($req) - $off, $off);
                die "redis write: $!\n" unless $n;
                $off += $n;
            }
            [ _resp_read($s) ];
        };
        return $r->[0] if $r;
        delete $self->{rconn};
        die $@ if $try == 2;
    }
}

sub is_redis_error { ref $_[-1] eq 'OpAMPTest::RedisError' }

# Redis logs every command in its slow log from now on (kept: 100,000)
sub slowlog_all {
    my ($self) = @_;
    $self->redis('CONFIG', 'SET', 'slowlog-max-len', 100000);
    $self->redis('CONFIG', 'SET', 'slowlog-log-slower-than', 0);
}

# beats.lua calls (EVALSHA with one key, <prefix>config_version) seen in
# the slow log so far, counted since the first call; empties the log
# ($prefix: the key prefix, default opamp:)
sub beats_calls {
    my ($self, $prefix) = @_;
    my $key = ($prefix // 'opamp:') . 'config_version';
    $self->{beats_calls} += grep {
        my $a = $_->[3];
        ($a->[0] // '') eq 'EVALSHA' && ($a->[2] // '') eq '1'
            && ($a->[3] // '') eq $key
    } @{ $self->redis('SLOWLOG', 'GET', 100000) };
    $self->redis('SLOWLOG', 'RESET');
    return $self->{beats_calls};
}

# waits (bounded by $o{secs}, 10) until every replica of this test's
# Redis has acknowledged all of its replication stream (a replica acks
# once a second).  With pause => $ms, writes are paused first (CLIENT
# PAUSE ... WRITE: the workers' calls wait), so that none comes after and
# a failover loses nothing.  WAIT would not do: it waits only for the
# writes made on its own connection.
sub replicas_caught_up {
    my ($self, %o) = @_;
    $self->redis('CLIENT', 'PAUSE', $o{pause}, 'WRITE') if $o{pause};
    return $self->wait_for(sub {
        my $i = $self->redis('INFO', 'replication');
        my ($m) = $i =~ /master_repl_offset:(\d+)/;
        my @r = $i =~ /^slave\d+:.*?offset=(\d+)/mg;
        return @r && !grep { $_ != $m } @r;
    }, $o{secs} // 10);
}

sub hgetall {
    my ($self, $key) = @_;
    my $r = $self->redis('HGETALL', $key) // [];
    return { @$r };
}

# the agent hash of a uid (16 bytes), under the default or a given prefix
sub agent_key {
    my ($self, $uid, $prefix) = @_;
    return ($prefix // 'opamp:') . 'agent:{' . uid_text($uid) . '}';
}

sub status_key {
    my ($self, $uid, $prefix) = @_;
    return ($prefix // 'opamp:') . 'status:{' . uid_text($uid) . '}';
}

# <prefix>status:{<uid>}: length-delimited protobuf fields numbered as in
# AgentToServer, read here with a reader of the test's own
my %STATUS_NAMES = (3 => 'description', 5 => 'health',
                    6 => 'effective_config', 7 => 'remote_config_status',
                    8 => 'package_statuses', 12 => 'custom_capabilities',
                    14 => 'available_components',
                    15 => 'connection_settings_status');

sub status_fields {
    my ($s) = @_;
    my %f;
    return \%f unless defined $s;
    my $varint = sub {
        my ($v, $shift) = (0, 0);
        while (1) {
            die "status string: truncated varint\n" unless length $s;
            my $b = ord substr($s, 0, 1, '');
            $v |= ($b & 0x7f) << $shift;
            $shift += 7;
            return $v if $b < 0x80;
        }
    };
    while (length $s) {
        my $tag = $varint->();
        die "status string: field $tag not length-delimited\n"
            unless ($tag & 7) == 2;
        my $len = $varint->();
        die "status string: truncated field\n" if $len > length $s;
        my $name = $STATUS_NAMES{ $tag >> 3 }
            // die "status string: unknown field " . ($tag >> 3) . "\n";
        $f{$name} = substr($s, 0, $len, '');
    }
    return \%f;
}

# a status field as stored: a first byte 0 says a zlib stream follows
sub stored_field {
    my ($v) = @_;
    return $v unless defined $v && length $v && substr($v, 0, 1) eq "\0";
    my $plain = Compress::Zlib::uncompress(substr($v, 1));
    die "stored field: not a zlib stream\n" unless defined $plain;
    return $plain;
}

sub agent {
    my ($self, $uid, $prefix) = @_;
    my $h = $self->hgetall($self->agent_key($uid, $prefix));
    # the status fields, inflated where they are stored compressed
    my $st = status_fields($self->redis('GET',
                                        $self->status_key($uid, $prefix)));
    $h->{$_} = stored_field($st->{$_}) for keys %$st;
    $prefix //= 'opamp:';
    # content shared with other agents, read where it is
    for my $k (['effective_config', 'config'],
               ['available_components', 'components']) {
        my $ref = $h->{"$k->[0]_ref"} // next;
        $h->{ $k->[0] } = $self->redis('HGET',
                              "${prefix}shared:$k->[1]:$ref", 'data');
    }
    return $h;
}

# a subscriber connection: returns a sub that waits (bounded, default 5 s)
# for the next message and returns [channel, payload] or undef
sub subscribe {
    my ($self, @channels) = @_;
    my $s = $self->redis_connect;
    syswrite($s, resp_command('SUBSCRIBE', @channels));
    _resp_read($s) for @channels;
    return sub {
        my ($t) = @_;
        my $deadline = time + ($t // 5);
        for (;;) {
            my $buf = ${*$s}{resp_buf} // '';
            if (index($buf, "\r\n") >= 0) {
                my $m = _resp_read($s);
                return ref $m eq 'ARRAY' && $m->[0] eq 'message'
                       ? [ $m->[1], $m->[2] ] : undef;
            }
            my $left = $deadline - time;
            return undef if $left <= 0
                            || !IO::Select->new($s)->can_read($left);
            my $n = sysread($s, ${*$s}{resp_buf}, 65536,
                            length ${*$s}{resp_buf});
            return undef unless $n;
        }
    };
}

# --- nginx -------------------------------------------------------------

# the whole nginx.conf; $server goes inside server {}, after the OpAMP
# location.  %o: workers (1), prefix ('opamp:'), http (text inside http {}),
# location (text inside location = /v1/opamp {}), main (text at the top
# level), redis (the opamp_redis value, default 127.0.0.1:<redis_port>),
# events (text inside events {}), connections (worker_connections, 1024),
# error_log_level (info, or debug with TEST_NGINX_DEBUG=1)
sub conf_text {
    my ($self, $server, %o) = @_;
    my $d = $self->{dir};
    my $workers = $o{workers} // 1;
    my $prefix = $o{prefix} // 'opamp:';
    my $redis = $o{redis} // "127.0.0.1:$self->{redis_port}";
    my $http = $o{http} // '';
    my $loc = $o{location} // '';
    my $main = $o{main} // '';
    my $level = $o{error_log_level}
                // ($ENV{TEST_NGINX_DEBUG} ? 'debug' : 'info');
    my $events = $o{events} // '';
    my $connections = $o{connections} // 1024;
    $server //= '';
    return <<"EOF";
load_module $self->{module};
$main
worker_processes $workers;
daemon on;
master_process on;
error_log $d/logs/error.log $level;
pid $d/logs/nginx.pid;
worker_shutdown_timeout 10s;

events {
    worker_connections $connections;
$events
}

http {
    access_log $d/logs/access.log;
    client_body_temp_path $d/tmp/body;
    proxy_temp_path $d/tmp/proxy;
    fastcgi_temp_path $d/tmp/fastcgi;
    uwsgi_temp_path $d/tmp/uwsgi;
    scgi_temp_path $d/tmp/scgi;

    opamp_redis $redis;
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

# writes <dir>/nginx.conf from the same arguments as conf_text (the server
# snippet, then options) and returns its path
sub write_conf {
    my ($self, $server, %o) = @_;
    $self->{conf} = "$self->{dir}/nginx.conf";
    open my $f, '>', $self->{conf} or die "$self->{conf}: $!\n";
    print $f $self->conf_text($server, %o);
    close $f;
    $self->{workers} = $o{workers} // 1;
    return $self->{conf};
}

# TEST_NGINX_ASAN=1: nginx itself is not instrumented, so the sanitizer
# runtime that the module needs must be loaded first (LD_PRELOAD); reports
# go to logs/asan.<pid> and logs/ubsan.<pid>, which done() reads.  Only
# nginx gets this environment, not protoc, redis-server or node.
sub _sanitizer_env {
    my ($self, $leaks) = @_;
    return '' unless $ENV{TEST_NGINX_ASAN};
    state $lib = do {
        my $l = `gcc -print-file-name=libasan.so`;
        chomp $l;
        die "no libasan.so from gcc -print-file-name\n" unless -e $l;
        $l;
    };
    my $d = "$self->{dir}/logs";
    return "env LD_PRELOAD=$lib"
           . " ASAN_OPTIONS=log_path=$d/asan:detect_leaks=" . ($leaks // 1)
           . ":allocator_may_return_null=1:detect_odr_violation=0"
           . " LSAN_OPTIONS=suppressions=$ROOT/t/lsan.supp"
           . ":print_suppressions=0"
           . " UBSAN_OPTIONS=log_path=$d/ubsan:print_stacktrace=1 ";
}

# the shell command that runs nginx with these arguments as the harness
# does (-p the test's directory, under valgrind or with the sanitizer
# runtime when asked): for nginx -s, which exits without freeing its first
# cycle's pool, so no leak check
sub nginx_cmd {
    my ($self, @args) = @_;
    local $self->{no_leak_check} = 1;
    return $self->_nginx_cmd(@args);
}

sub _nginx_cmd {
    my ($self, @args) = @_;
    my $cmd = join ' ', $self->{nginx}, '-p', "$self->{dir}/", @args;
    $cmd = $self->_sanitizer_env($self->{no_leak_check} ? 0 : 1) . $cmd;

    # TEST_NGINX_VALGRIND=1: every nginx process under memcheck, one log
    # per process; done() fails the test on any error they report
    if ($ENV{TEST_NGINX_VALGRIND}) {
        $cmd = "valgrind -q --leak-check=full"
               . " --errors-for-leak-kinds=definite --show-leak-kinds=definite"
               . " --suppressions=$ROOT/t/valgrind.supp"
               . " --log-file=$self->{dir}/logs/valgrind.%p.log $cmd";
    }
    return $cmd;
}

# writes the config, starts nginx (daemon, master + workers) and waits
# until the port accepts and, when the test's Redis answers, until every
# worker has both its Redis connections up.  %o as for conf_text, plus
# no_wait_redis => 1 to skip the Redis wait.
sub start_nginx {
    my ($self, $server, %o) = @_;
    die "nginx already started\n" if $self->{nginx_pid};
    $self->write_conf($server, %o);
    unlink "$self->{dir}/logs/nginx.pid";
    my $cmd = $self->_nginx_cmd('-c', $self->{conf});
    my $out = `$cmd 2>&1`;
    die "nginx did not start ($cmd): $out\n" if $?;
    my $slow = $ENV{TEST_NGINX_VALGRIND} ? 12 : 1;
    $self->wait_for(sub { -s "$self->{dir}/logs/nginx.pid" }, 5 * $slow)
        or die "no nginx pid file\n";
    $self->{nginx_pid} = $self->read_pid;
    $self->wait_for(sub {
        my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                      PeerPort => $self->{port},
                                      Proto => 'tcp', Timeout => 1);
        return $s ? 1 : 0;
    }, 5 * $slow) or die "nginx does not accept on port $self->{port}\n";

    my $n = $o{workers} // 1;
    $self->wait_for(sub { my @w = $self->worker_pids; @w >= $n }, 5 * $slow)
        or die "nginx did not start $n workers\n";

    if (!$o{no_wait_redis} && $self->redis_up) {
        $self->wait_for(sub { $self->workers_ready($n) }, 10 * $slow)
            or die "nginx workers did not connect to redis\n";
    }
    return $self;
}

# whether the test's Redis answers now
sub redis_up {
    my ($self) = @_;
    my $r = eval { $self->redis('PING') };
    return defined $r && $r eq 'PONG';
}

sub read_pid {
    my ($self) = @_;
    open my $f, '<', "$self->{dir}/logs/nginx.pid" or return undef;
    my $pid = <$f>;
    return undef unless defined $pid;
    chomp $pid;
    return $pid;
}

sub nginx_pid { $_[0]{nginx_pid} }

# the children of the master (workers, and old workers shutting down)
sub worker_pids {
    my ($self) = @_;
    my $m = $self->{nginx_pid} or return ();
    my @p;
    for my $d (glob '/proc/[0-9]*') {
        open my $f, '<', "$d/stat" or next;
        my $stat = <$f>;
        next unless $stat;
        my ($pid, $ppid) = $stat =~ /^(\d+) \(.*\) \S (\d+)/;
        next unless defined $ppid && $ppid == $m;
        # an old worker that is shutting down has no listening socket and
        # calls itself "nginx: worker process is shutting down"
        if (open my $c, '<', "$d/cmdline") {
            my $cl = <$c> // '';
            next if $cl =~ /shutting down|cache manager|cache loader/;
        }
        push @p, $pid;
    }
    return sort { $a <=> $b } @p;
}

# Every worker subscribed to its channel (seen in PUBSUB CHANNELS), and at
# least as many command connections as subscriber connections (a worker
# opens both together; the command link is ready once it has sent a
# command).  The harness's own connections are named opamp-test.
sub workers_ready {
    my ($self, $n) = @_;
    my @w = $self->worker_pids;
    return 0 unless @w >= ($n // 1);
    my $ch = eval { $self->redis('PUBSUB', 'CHANNELS', '*worker:*') } || [];
    my %have = map { (($_ =~ /:(\d+)$/)[0] // '') => 1 } @$ch;
    return 0 if grep { !$have{$_} } @w;
    my $list = eval { $self->redis('CLIENT', 'LIST') } // '';
    my $me = eval { $self->redis('CLIENT', 'ID') } // -1;
    my ($sub, $cmd) = (0, 0);
    for my $l (split /\n/, $list) {
        my %f = map { /^([^=]+)=(.*)$/ ? ($1 => $2) : () } split / /, $l;
        next if ($f{id} // '') eq $me || ($f{name} // '') eq 'opamp-test';
        if (($f{sub} // 0) > 0 || ($f{psub} // 0) > 0) {
            $sub++;
        } elsif (($f{cmd} // 'NULL') ne 'NULL') {
            $cmd++;
        }
    }
    return $cmd >= $sub;
}

# HUP, then waits for a new generation of workers (ready as in start);
# true when they are
sub reload {
    my ($self, %o) = @_;
    my $n = $o{workers} // $self->{workers} // 1;
    my %old = map { $_ => 1 } $self->worker_pids;
    kill 'HUP', $self->{nginx_pid};
    # ready when the new workers are, and no old one still accepts (an old
    # worker gone, or "shutting down", has closed its listening sockets)
    return $self->wait_for(sub {
        my @w = $self->worker_pids;
        my @new = grep { !$old{$_} } @w;
        @new >= $n && @new == @w
            && (!$self->redis_up || $self->workers_ready($n));
    }, $ENV{TEST_NGINX_VALGRIND} ? 60 : 10);
}

sub stop_nginx {
    my ($self) = @_;
    return unless ($self->{owner} // $$) == $$;
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
    # nginx -t that fails exits without freeing its first cycle's pool
    my $env = $self->_sanitizer_env(0);
    my $out = `$env$self->{nginx} -t -p $self->{dir}/ -c $file 2>&1`;
    return ($? >> 8, $out);
}

sub error_log {
    my ($self) = @_;
    open my $f, '<', "$self->{dir}/logs/error.log" or return '';
    local $/;
    return <$f> // '';
}

sub error_log_problems {
    my ($self) = @_;
    return grep { /\[(alert|crit|emerg)\]/ } split /\n/, $self->error_log;
}

# stops nginx and Redis and checks the error log (one test)
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

    if ($ENV{TEST_NGINX_ASAN}) {
        my @v;
        for my $f (glob "$self->{dir}/logs/asan.* $self->{dir}/logs/ubsan.*") {
            open my $fh, '<', $f or next;
            local $/;
            my $text = <$fh>;
            push @v, "$f:\n$text" if $text =~ /\S/;
        }
        ok(!@v, 'AddressSanitizer and UBSan report nothing')
            or diag(join "\n", @v);
    }
    $self->{done} = 1;
}

sub DESTROY {
    my ($self) = @_;
    local ($?, $@, $!);
    delete $LIVE{"$self"};
    return unless ($self->{owner} // $$) == $$;
    $self->stop_nginx;
    $self->stop_redis;
}

# --- OpAMP -------------------------------------------------------------

sub _protoc {
    my ($self, $mode, $type, $in) = @_;
    $type = "opamp.proto.v1.$type" unless $type =~ /\./;
    my $n = ++$self->{protoc_n};
    my ($fin, $fout, $ferr) = map { "$self->{dir}/tmp/protoc.$n.$_" }
                                  qw(in out err);
    open my $f, '>:raw', $fin or die "$fin: $!\n";
    print $f $in;
    close $f;
    system(($mode eq 'decode_raw' ? 'protoc --decode_raw'
            : "protoc --$mode=$type -I $ROOT/proto opamp/v1/opamp.proto")
           . " < $fin > $fout 2> $ferr");
    my $rc = $?;
    local $/;
    open $f, '<:raw', $fout or die "$fout: $!\n";
    my $out = <$f> // '';
    close $f;
    open $f, '<', $ferr;
    my $err = <$f> // '';
    close $f;
    unlink $fin, $fout, $ferr;
    die "protoc --$mode=$type failed: $err" . ($mode eq 'encode'
        ? "for: $in\n" : '') if $rc;
    return $out;
}

# text format -> binary, of any message type of opamp.proto
sub encode { my ($self, $type, $text) = @_; $self->_protoc('encode', $type, $text) }

sub a2s { my ($self, $text) = @_; $self->encode('AgentToServer', $text) }

# binary -> protoc's text format, of any message type (dies if invalid)
sub decode { my ($self, $type, $b) = @_; $self->_protoc('decode', $type, $b) }

# binary -> protoc's guess at it without a schema (--decode_raw)
sub decode_raw { my ($self, $b) = @_; $self->_protoc('decode_raw', 'raw', $b) }

sub s2a_text { my ($self, $b) = @_; $self->decode('ServerToAgent', $b) }

# binary -> Perl: messages are hashrefs keyed by field name; repeated
# fields are array refs; map fields are hashrefs keyed by the map key;
# scalars are strings as protoc prints them (numbers in decimal, enums by
# name, bools "true"/"false", strings and bytes unescaped to raw bytes).
# Fields at their default value are absent (proto3).
sub s2a { my ($self, $b) = @_; $self->parse('ServerToAgent', $b) }

sub parse {
    my ($self, $type, $b) = @_;
    my $text = $self->decode($type, $b);
    return parse_text($type, $text);
}

# --- a small protobuf text format parser ---------------------------------

my %SCHEMA;    # message name -> { field -> { type, repeated, map } }

sub _load_schema {
    return if %SCHEMA;
    for my $file (glob "$ROOT/proto/opamp/v1/*.proto") {
        open my $f, '<', $file or die "$file: $!\n";
        local $/;
        my $src = <$f>;
        $src =~ s{//[^\n]*}{}g;
        $src =~ s{/\*.*?\*/}{}gs;
        my @stack;
        my @tok = $src =~ /(map\s*<[^>]*>|[A-Za-z_][\w.]*|\d+|[{}=;])/g;
        my $i = 0;
        my $depth_kind = [];    # per open brace: message name or undef
        while ($i < @tok) {
            my $t = $tok[$i];
            if ($t eq 'message' && $i + 2 < @tok && $tok[$i + 2] eq '{') {
                push @stack, $tok[$i + 1];
                push @$depth_kind, $tok[$i + 1];
                $SCHEMA{ $tok[$i + 1] } //= {};
                $i += 3;
                next;
            }
            if (($t eq 'enum' || $t eq 'oneof' || $t eq 'service')
                && $i + 2 < @tok && $tok[$i + 2] eq '{')
            {
                push @$depth_kind, $t eq 'oneof' ? 'oneof' : undef;
                $i += 3;
                next;
            }
            if ($t eq '{') { push @$depth_kind, undef; $i++; next }
            if ($t eq '}') {
                my $k = pop @$depth_kind;
                pop @stack if defined $k && $k ne 'oneof';
                $i++;
                next;
            }
            my $in_msg = @$depth_kind
                         && defined $depth_kind->[-1]
                         && @stack;
            if ($in_msg && $t ne 'option' && $t ne 'reserved') {
                # [repeated|optional] type name = N ;
                my $rep = 0;
                my $j = $i;
                if ($tok[$j] eq 'repeated' || $tok[$j] eq 'optional') {
                    $rep = $tok[$j] eq 'repeated';
                    $j++;
                }
                if ($j + 3 < @tok && $tok[$j + 2] eq '=' && $tok[$j + 4]
                    && $tok[$j + 4] eq ';')
                {
                    my ($ft, $fn) = @tok[$j, $j + 1];
                    my $map = 0;
                    if ($ft =~ /^map\s*<\s*\w+\s*,\s*([\w.]+)\s*>$/) {
                        $ft = $1;
                        $map = 1;
                    }
                    $ft =~ s/.*\.//;
                    $SCHEMA{ $stack[-1] }{$fn} = { type => $ft,
                        repeated => $rep, map => $map };
                    $i = $j + 5;
                    next;
                }
            }
            $i++;
        }
    }
}

sub schema { _load_schema(); return \%SCHEMA }

sub _unescape {
    my ($s) = @_;
    my %c = (n => "\n", t => "\t", r => "\r", a => "\a", b => "\b",
             f => "\f", v => "\x0b", '"' => '"', "'" => "'", '\\' => '\\',
             '?' => '?');
    $s =~ s{\\(?:([0-7]{1,3})|x([0-9a-fA-F]{1,2})|(.))}{
        defined $1 ? chr(oct $1) : defined $2 ? chr(hex $2) : ($c{$3} // $3)
    }ge;
    return $s;
}

sub parse_text {
    my ($type, $text) = @_;
    _load_schema();
    my $pos = 0;
    my $msg = _parse_msg($type, \$text, \$pos, 0);
    return $msg;
}

sub _store {
    my ($m, $type, $name, $val) = @_;
    my $f = $SCHEMA{$type // ''}{$name};
    if ($f && $f->{map}) {
        my $k = ref $val eq 'HASH' ? ($val->{key} // '') : '';
        $m->{$name}{$k} = ref $val eq 'HASH' ? $val->{value} : undef;
    } elsif ($f && $f->{repeated}) {
        push @{ $m->{$name} }, $val;
    } elsif (!$f && exists $m->{$name}) {
        # unknown to the schema and seen twice: repeated after all
        $m->{$name} = [ $m->{$name} ] unless ref $m->{$name} eq 'ARRAY';
        push @{ $m->{$name} }, $val;
    } else {
        $m->{$name} = $val;
    }
}

sub _parse_msg {
    my ($type, $tr, $pr, $nested) = @_;
    my %m;
    for (;;) {
        pos($$tr) = $$pr;
        $$tr =~ /\G\s*/gc;
        $$pr = pos($$tr);
        if ($$pr >= length $$tr) {
            die "text format: unexpected end\n" if $nested;
            return \%m;
        }
        if ($$tr =~ /\G\}/gc) {
            $$pr = pos($$tr);
            die "text format: unexpected }\n" unless $nested;
            return \%m;
        }
        $$tr =~ /\G(\[[^\]]*\]|\w+)\s*/gc
            or die "text format: bad token at "
                   . substr($$tr, $$pr, 40) . "\n";
        my $name = $1;
        my $f = $SCHEMA{$type // ''}{$name};
        if ($$tr =~ /\G:?\s*\{/gc) {
            $$pr = pos($$tr);
            my $sub_type = $f ? $f->{type} : undef;
            # a map entry: key and value
            if ($f && $f->{map}) {
                my $e = _parse_msg("__map_$sub_type", $tr, $pr, 1);
                _store(\%m, $type, $name, $e);
                next;
            }
            my $v = _parse_msg($type && $type =~ /^__map_(.*)/ && $name eq
                               'value' ? $1 : $sub_type, $tr, $pr, 1);
            _store(\%m, $type, $name, $v);
            next;
        }
        $$tr =~ /\G:\s*/gc or die "text format: no ':' after $name\n";
        my $val;
        if ($$tr =~ /\G"((?:[^"\\]|\\.)*)"/gc) {
            $val = _unescape($1);
            # adjacent strings concatenate
            while ($$tr =~ /\G\s*"((?:[^"\\]|\\.)*)"/gc) {
                $val .= _unescape($1);
            }
        } elsif ($$tr =~ /\G([^\s}]+)/gc) {
            $val = $1;
        } else {
            die "text format: no value for $name\n";
        }
        $$pr = pos($$tr);
        _store(\%m, $type, $name, $val);
    }
}

# --- plain HTTP --------------------------------------------------------

# one HTTP/1.1 request on a new connection (Connection: close):
# ($status, {lowercase header => value}, $body).  The body is de-chunked,
# not gunzipped.  Special keys: -path (default /v1/opamp), -method
# (default POST), -timeout (seconds, default 10).  Content-Type defaults
# to application/x-protobuf; give it as undef to send none.  A header
# value that is an array ref is sent once per element.
sub http_post {
    my ($self, $body, %h) = @_;
    my $path = delete $h{-path} // '/v1/opamp';
    my $method = delete $h{-method} // 'POST';
    my $timeout = delete $h{-timeout} // 10;
    my $port = delete $h{-port} // $self->{port};
    my $local = delete $h{-local};
    $body //= '';
    $h{'Content-Type'} = 'application/x-protobuf'
        unless exists $h{'Content-Type'};
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                  PeerPort => $port, Proto => 'tcp',
                                  Timeout => 5,
                                  $local ? (LocalAddr => $local) : ())
        or die "connect to port $port: $!\n";
    binmode $s;
    my $hdr = '';
    for my $k (sort keys %h) {
        next unless defined $h{$k};
        for my $v (ref $h{$k} eq 'ARRAY' ? @{ $h{$k} } : $h{$k}) {
            $hdr .= "$k: $v\r\n";
        }
    }
    my $req = "$method $path HTTP/1.1\r\nHost: 127.0.0.1\r\n"
              . "Connection: close\r\n" . $hdr
              . (length $body || $method eq 'POST' || $method eq 'PUT'
                 ? 'Content-Length: ' . length($body) . "\r\n" : '')
              . "\r\n" . $body;
    my $off = 0;
    while ($off < length $req) {
        my $n = syswrite($s, $req, length($req) - $off, $off);
        last unless $n;    # the server may answer and close early (413)
        $off += $n;
    }

    my $resp = '';
    my $sel = IO::Select->new($s);
    my $deadline = time + $timeout;
    my ($head, $need);
    for (;;) {
        if (!defined $head && (my $i = index($resp, "\r\n\r\n")) >= 0) {
            $head = substr($resp, 0, $i);
            $resp = substr($resp, $i + 4);
            my ($cl) = $head =~ /^Content-Length:\s*(\d+)/mi;
            $need = $cl if $head !~ /^Transfer-Encoding:\s*chunked/mi;
            $need = 0 if $method eq 'HEAD' || $head =~ m{^HTTP/1\.\d (1\d\d|204|304)};
        }
        last if defined $head && defined $need && length $resp >= $need;
        my $left = $deadline - time;
        last if $left <= 0 || !$sel->can_read($left);
        my $n = sysread($s, $resp, 65536, length $resp);
        last unless $n;
    }
    close $s;
    return (undef, {}, '') unless defined $head;
    my ($status) = $head =~ m{^HTTP/1\.\d (\d+)};
    my %hd;
    for (split /\r\n/, $head) {
        next unless /^([^:]+):\s*(.*)$/;
        my $k = lc $1;
        $hd{$k} = exists $hd{$k} ? "$hd{$k}, $2" : $2;
    }
    if (($hd{'transfer-encoding'} // '') =~ /chunked/i) {
        my $b = '';
        while ($resp =~ s/^([0-9a-fA-F]+)[^\r]*\r\n//) {
            my $len = hex $1;
            last if $len == 0;
            $b .= substr($resp, 0, $len, '');
            $resp =~ s/^\r\n//;
        }
        $resp = $b;
    } elsif (defined $need) {
        $resp = substr($resp, 0, $need);
    }
    return ($status, \%hd, $resp);
}

package OpAMPTest::RedisError;

sub new { my ($c, $m) = @_; bless \$m, $c }

1;
