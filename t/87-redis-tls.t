#!/usr/bin/perl

# TLS to Redis through nginx's OpenSSL, against Debian's redis-server
# with --tls-port and a test CA made here with the openssl command.
# Mutual TLS with a good CA and client certificate works (agents are
# served, a 3 MB config goes over TLS in pieces); a CA that did not sign
# the server, a missing client certificate, a name the certificate does
# not have and protocols the server does not take each fail with one
# clear [error] line, and agents get 503; a server whose certificate does
# not verify never gets AUTH.
# Behind a Sentinel over TLS, the workers reach it and the primary it
# names over TLS.  SNI: with opamp_redis_ssl_server_name on, a server
# (openssl s_server) that refuses unknown names refuses ours; with it
# off, no name is sent.

use strict;
use warnings;

use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";

use OpAMPTest;
use OpAMPRedisHA;

my $t = OpAMPTest->new;
my $ha = OpAMPRedisHA->new($t);
my $d = $t->dir;

# --- a test CA, a server and a client certificate; another CA ---------

OpAMPTest::make_certs($d,
    server => 'subjectAltName=DNS:redis.test,IP:127.0.0.1',
    client => 'extendedKeyUsage=clientAuth');

# plain port for the harness's own checks, TLS port for nginx
my $tls_port = OpAMPTest::free_port();
my $pid = $ha->server(port => $t->redis_port, args => [
    '--tls-port', $tls_port,
    '--tls-cert-file', "$d/server.crt", '--tls-key-file', "$d/server.key",
    '--tls-ca-cert-file', "$d/ca.crt"]);

my $DESC = 'agent_description { identifying_attributes { key: '
           . '"service.name" value { string_value: "tls" } } }';

sub agent_status {
    my $uid = random_uid();
    my ($s) = $t->http_post($t->a2s('instance_uid: "' . uid_escape($uid)
                                     . "\" sequence_num: 0 capabilities: 1 "
                                     . $DESC));
    return ($s, $uid);
}

my $ADMIN = '
        location /admin/ { opamp_admin; client_max_body_size 8m; }';

sub tls_conf {
    my (%o) = @_;
    return join "\n    ",
        'opamp_redis_timeout 2s;',
        'opamp_redis_ssl_verify on;',
        'opamp_redis_ssl_server_name on;',
        "opamp_redis_ssl_trusted_certificate $d/" . ($o{ca} // 'ca') . '.crt;',
        ($o{name} ? "opamp_redis_ssl_name $o{name};" : ()),
        ($o{protocols} ? "opamp_redis_ssl_protocols $o{protocols};" : ()),
        ($o{client} // 1
         ? ("opamp_redis_ssl_certificate $d/client.crt;",
            "opamp_redis_ssl_certificate_key $d/client.key;")
         : ());
}

# --- mutual TLS that works --------------------------------------------

$t->start_nginx($ADMIN, workers => 2, redis => "rediss://127.0.0.1:$tls_port",
                http => tls_conf(name => 'redis.test'));
pass('both workers connect over mutual TLS');

my ($s, $uid) = agent_status();
is($s, 200, 'an agent is served through the TLS connection');
is($t->agent($uid)->{sequence_num}, 0, 'and its state is in Redis');

my $clients = $t->redis('CLIENT', 'LIST');
my $tls_clients = () = $clients =~ /laddr=127\.0\.0\.1:$tls_port /g;
is($tls_clients, 4, 'the workers\' four connections are on the TLS port');

my $huge = 'z' x 3_000_000;
($s) = $t->http_post('{"selector":"service.name=tls","files":{"a":'
                     . '{"body":"' . $huge . '"}}}', -method => 'PUT',
                     -path => '/admin/configs/groups/huge',
                     'Content-Type' => 'application/json');
is($s, 200, 'a 3 MB config goes over TLS');
is($t->redis('HSTRLEN', 'opamp:config:group:huge', 'file:a'), 3_000_000,
   'and arrives whole');
($s, $uid) = agent_status();
is($s, 200, 'the connection serves the next command');

$t->stop_nginx;

# --- failures ---------------------------------------------------------

my @cases = (
    [ 'a CA that did not sign the server', { ca => 'ca2' },
      qr/\[error\].*redis command connection to "rediss:.*failed: TLS certificate of the server not trusted: .*\(\d+\); retrying/ ],
    [ 'no client certificate', { client => 0 },
      qr/\[error\].*redis command connection to "rediss:.*failed: TLS read failed: .*(certificate required|handshake failure)/ ],
    [ 'a name the certificate does not have', { name => 'other.test' },
      qr/\[error\].*redis command connection to "rediss:.*failed: TLS certificate of the server does not match "other\.test"/ ],
    [ 'only a protocol the server does not take',
      { protocols => 'TLSv1.2', server => 'TLSv1.3' },
      qr/\[error\].*redis command connection to "rediss:.*failed: TLS handshake failed: .*(protocol|version)/ ],
);

for my $c (@cases) {
    my ($what, $o, $re) = @$c;
    my $before = length $t->error_log;
    $t->redis('CONFIG', 'SET', 'tls-protocols', $o->{server})
        if $o->{server};
    $t->start_nginx($ADMIN, workers => 1, no_wait_redis => 1,
                    redis => "rediss://127.0.0.1:$tls_port",
                    http => tls_conf(%$o));
    my $log = '';
    ok($t->wait_for(sub { $log = substr($t->error_log, $before);
                          $log =~ $re }, 10),
       "$what: a clear [error] line") or diag $log;
    ($s) = agent_status();
    is($s, 503, "$what: agents get 503");
    my $lines = () = $log =~ /redis command connection to .* failed/g;
    is($lines, 1, "$what: one line, not one per retry");
    $t->stop_nginx;
    $t->redis('CONFIG', 'SET', 'tls-protocols', 'TLSv1.2 TLSv1.3')
        if $o->{server};
}

# --- the password goes only where the certificate verified -----------
#
# operations.md, what a Sentinel is trusted with: a server the workers are
# sent to (by a Sentinel; here by the URL, the same path) gets the
# primary's AUTH only once its certificate has verified.  Redis's ACL LOG
# records each AUTH of an unknown user: with the right CA it shows ours,
# so that its absence with the wrong one means something.

sub flat { map { ref $_ eq 'ARRAY' ? flat(@$_) : ($_ // '') } @_ }

for my $c ([ 'ca', 1, 'a server whose certificate verifies' ],
           [ 'ca2', 0, 'a server whose certificate does not verify' ])
{
    my ($ca, $sent, $what) = @$c;
    $t->redis('ACL', 'LOG', 'RESET');
    my $before = length $t->error_log;
    $t->start_nginx($ADMIN, workers => 1, no_wait_redis => 1,
                    redis => "rediss://trust-check:secret\@127.0.0.1:"
                             . $tls_port,
                    http => tls_conf(ca => $ca, name => 'redis.test'));
    my $log = '';
    $t->wait_for(sub { $log = substr($t->error_log, $before);
                       $log =~ /\[error\].*redis command connection/ }, 10);
    like($log, $sent
               ? qr/AUTH on the command connection .* failed: WRONGPASS/
               : qr/command connection .* failed: TLS certificate of the/,
         "$what: an [error] line that says why");
    my $auth = grep { $_ eq 'trust-check' } flat($t->redis('ACL', 'LOG'));
    if ($sent) {
        ok($auth, "$what: gets AUTH (Redis's ACL LOG has it)");
    } else {
        ok(!$auth, "$what: never gets AUTH");
    }
    $t->stop_nginx;
}

# --- Sentinel over TLS: the Sentinel, and the primary it names ---------

my $s_port = OpAMPTest::free_port();
open my $sc, '>', "$d/sentinel-tls.conf" or die;
print $sc <<"EOF";
port 0
tls-port $s_port
bind 127.0.0.1
dir $d
tls-cert-file $d/server.crt
tls-key-file $d/server.key
tls-ca-cert-file $d/ca.crt
tls-replication yes
sentinel monitor tlsm 127.0.0.1 $tls_port 1
sentinel down-after-milliseconds tlsm 1000
EOF
close $sc;
my $sentinel = $ha->spawn("$d/logs/sentinel-tls.log", 'redis-server',
                          "$d/sentinel-tls.conf", '--sentinel');

$t->start_nginx($ADMIN, workers => 2,
                redis => "sentinel://127.0.0.1:$s_port/tlsm",
                http => "opamp_redis_ssl on;\n    "
                        . tls_conf(name => 'redis.test'));
pass('behind a Sentinel over TLS, both workers connect to the primary '
     . 'over TLS');
like($t->error_log, qr/primary of "tlsm" is 127\.0\.0\.1:$tls_port \(named by a Sentinel\)/,
     'which the Sentinel named');
($s, $uid) = agent_status();
is($s, 200, 'an agent is served');
is($t->agent($uid)->{sequence_num}, 0, 'and its state is in Redis');
$clients = $t->redis('CLIENT', 'LIST');
$tls_clients = () = $clients
    =~ /laddr=127\.0\.0\.1:$tls_port fd=\d+ name=(?!sentinel)/g;
is($tls_clients, 4, "the workers' four connections are on the TLS port");
$t->stop_nginx;
$ha->stop($sentinel);

# --- SNI: a TLS server that refuses any name but redis.test ------------

my $sni_port = OpAMPTest::free_port();
my $sni = $ha->spawn("$d/logs/s_server.log", 'openssl', 's_server',
    '-accept', "127.0.0.1:$sni_port", '-www', '-servername', 'redis.test',
    '-servername_fatal', '-cert', "$d/server.crt", '-key', "$d/server.key",
    '-cert2', "$d/server.crt", '-key2', "$d/server.key");
$t->wait_for(sub { IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                         PeerPort => $sni_port) }, 10)
    or die "openssl s_server did not start\n";

for my $c ([ 'on', qr/TLS handshake failed: .*unrecognized name/,
             'SNI on: the server sees the name and refuses it' ],
           [ 'off', qr/TLS certificate of the server does not match "other\.test"/,
             'SNI off: no name is sent (the handshake passes, the '
             . 'verification does not)' ])
{
    my ($on, $re, $what) = @$c;
    my $before = length $t->error_log;
    my $conf = tls_conf(name => 'other.test');
    $conf =~ s/opamp_redis_ssl_server_name on;/opamp_redis_ssl_server_name $on;/
        or die;
    $t->start_nginx($ADMIN, workers => 1, no_wait_redis => 1,
                    redis => "rediss://127.0.0.1:$sni_port", http => $conf);
    my $log = '';
    ok($t->wait_for(sub { $log = substr($t->error_log, $before);
                          $log =~ /\[error\].*redis command connection/ },
                    10), "$what: an [error] line");
    like($log, $re, "$what: it says why") or diag $log;
    $t->stop_nginx;
}
$ha->stop($sni);

$t->done;
$ha->stop($pid);
done_testing;
