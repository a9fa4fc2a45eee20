#!/usr/bin/perl

# Interop: per-agent tokens (docs/security.md, Per-agent tokens) with the
# real OpAMP supervisor and its collector (built by `make interop-tools`,
# as t/94 and t/97), over WebSocket.  The supervisor is configured with
# the shared enrollment credential and accepts OpAMP connection settings:
#
# * it enrolls over ws://; the operator then offers it a wss:// endpoint
#   with the CA that verifies it and a header it must keep; the offer
#   goes out with a token of its own in the Authorization header; it
#   reconnects to the TLS endpoint with the token (which becomes its
#   token in Redis) and the other header, verifying the server;
# * an offer with another CA (and so another token) fails its TLS
#   handshake: it still verifies TLS;
# * restarted, it has forgotten the token and comes back with the
#   enrollment credential: refused (opamp_token_reenroll off), its log
#   showing the server's reason;
# * after DELETE agents/<uid>/token the token itself is refused.
#
# Skips (saying so) only on a machine without Go; see t/lib/OpAMPInterop.pm.

use strict;
use warnings;

use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use JSON::PP;
use Digest::SHA qw(sha256_hex);

use OpAMPTest qw(:DEFAULT write_file file_text);
use OpAMPInterop;

my $supervisor = OpAMPInterop::need('opampsupervisor');
my $otelcol = OpAMPInterop::need('otelcol');

my $t = OpAMPTest->new;
$t->start_redis;
my $d = $t->dir;

# a test CA and a server certificate for 127.0.0.1; another CA
OpAMPTest::make_certs($d, server => 'subjectAltName=IP:127.0.0.1');

my $TOK = '
            opamp_heartbeat_interval 1s;
            opamp_enrollment_token enroll-secret;
            opamp_agent_attribute tenant $http_x_tenant;';
my $TLS_PORT = OpAMPTest::free_port();
$t->start_nginx('
        location /admin/ { opamp_admin; }
        location = /metrics { opamp_metrics; }',
    workers => 2, location => $TOK, http => "
    log_format auth '\$request \$status \"\$http_authorization\" \"\$http_x_tenant\"';
    server {
        listen 127.0.0.1:$TLS_PORT ssl;
        ssl_certificate $d/server.crt;
        ssl_certificate_key $d/server.key;
        access_log $d/logs/tls-access.log auth;
        location = /v1/opamp {
            opamp;$TOK
        }
    }");

my $json = JSON::PP->new->canonical;

sub api {
    my ($method, $path, $body) = @_;
    my ($s, undef, $b) = $t->http_post($body // '', -method => $method,
                                       -path => "/admin/$path",
                                       'Content-Type' => 'application/json');
    return ($s, eval { $json->decode($b) });
}

sub hget { my ($uid, $f) = @_; return $t->redis('HGET', "opamp:agent:{$uid}", $f) }

END {
    OpAMPInterop::stop_collectors($otelcol, $t->dir)
        if $t && ($t->{owner} // 0) == $$;
}

my $U = OpAMPInterop::uuid4();
my $dir = "$d/sup";
mkdir $dir;
mkdir "$dir/storage";
write_file("$dir/storage/persistent_state.yaml", "instance_id: $U\n");
write_file("$dir/telemetry.yaml",
           "service:\n  telemetry:\n    metrics:\n      level: none\n");
write_file("$dir/supervisor.yaml", <<"EOF");
server:
  endpoint: ws://127.0.0.1:${\ $t->port}/v1/opamp
  headers:
    Authorization: [Bearer enroll-secret]
    X-Tenant: [red]
capabilities:
  accepts_remote_config: true
  reports_effective_config: true
  reports_health: true
  reports_heartbeat: true
  accepts_opamp_connection_settings: true
agent:
  executable: $otelcol
  args: [--config, $dir/telemetry.yaml]
  bootstrap_timeout: 60s
storage:
  directory: $dir/storage
telemetry:
  logs:
    level: debug
    output_paths: [$dir/supervisor.log]
    error_output_paths: [$dir/supervisor.log]
EOF

sub spawn {
    return OpAMPInterop->spawn([ $supervisor, '--config',
                                 "$dir/supervisor.yaml" ],
                               log => "$dir/stderr.log", dir => $dir);
}

my $sup = spawn();
ok($t->wait_for(sub { defined hget($U, 'token_ms') }, 120),
   'the supervisor enrolls with the enrollment credential')
    or diag(`tail -20 $dir/supervisor.log`);
is(hget($U, 'token_sha256'), undef, 'holding no token yet');

sub offer {
    my ($ca) = @_;
    return $json->encode({ opamp => {
        destination_endpoint => "wss://127.0.0.1:$TLS_PORT/v1/opamp",
        headers => { headers => [ { key => 'X-Tenant', value => 'blue' } ] },
        certificate => { ca_cert => file_text("$d/$ca") } } });
}

my ($st) = api('PUT', "connection-settings/agents/$U", offer('ca.crt'));
is($st, 200, 'the operator offers it a wss:// endpoint with its CA');
ok($t->wait_for(sub { file_text("$d/logs/tls-access.log")
                          =~ m{GET /v1/opamp HTTP/1.1 101 "Bearer ([A-Za-z0-9_-]{43})" "blue"} }, 60),
   'it reconnects to the TLS endpoint, verifying it, with a token of its '
   . 'own and the offered header')
    or diag(`tail -20 $dir/supervisor.log`);
my ($tok) = file_text("$d/logs/tls-access.log")
            =~ m{101 "Bearer ([A-Za-z0-9_-]{43})"};
ok($t->wait_for(sub { (hget($U, 'token_sha256') // '') eq sha256_hex($tok // '') }, 30),
   'which becomes its token in Redis, as a SHA-256');
ok($t->wait_for(sub { !defined hget($U, 'token_next_sha256') }, 30),
   'with none on its way');
# its messages: those that reached Redis, and the heartbeats its worker
# answered itself (opamp_heartbeat_recheck); it is the only agent
my $messages = sub {
    my (undef, undef, $b) = $t->http_post('', -method => 'GET',
                                          -path => '/metrics');
    my ($w) = $b =~ /^opamp_heartbeats_in_worker_total (\d+)$/m;
    return (hget($U, 'sequence_num') // 0) + ($w // 0);
};
my $seq = $messages->();
ok($t->wait_for(sub { $messages->() > $seq + 2 }, 30),
   'and it goes on reporting with it');
unlike(file_text("$d/logs/tls-access.log"), qr/enroll-secret/,
       'never again with the enrollment credential there');

my $log_at = length file_text("$dir/supervisor.log");
($st) = api('PUT', "connection-settings/agents/$U", offer('ca2.crt'));
is($st, 200, 'an offer with another CA');
ok($t->wait_for(sub {
       substr(file_text("$dir/supervisor.log"), $log_at)
           =~ /certificate signed by unknown authority/ }, 60),
   'fails its TLS handshake: with its token it still verifies TLS')
    or diag(`tail -20 $dir/supervisor.log`);

# restarted, it has lost the token (the supervisor keeps accepted
# settings in memory only) and comes back with the enrollment credential
$sup->stop('INT', 20);
OpAMPInterop::stop_collectors($otelcol, $dir);
unlink "$dir/supervisor.log";
$sup = spawn();
ok($t->wait_for(sub {
       file_text("$dir/supervisor.log")
           =~ /Server returned an error response.*enrollment credential is not taken/ }, 120),
   'restarted with the enrollment credential, it is refused (the lost-'
   . 'token policy: opamp_token_reenroll off)')
    or diag(`tail -20 $dir/supervisor.log`);
like($t->error_log, qr/\[warn\].*opamp: 403 refused: the enrollment credential/,
     'and the refusal is logged');
$sup->stop('INT', 20);
OpAMPInterop::stop_collectors($otelcol, $dir);

# the token itself, revoked
($st) = api('DELETE', "agents/$U/token");
is($st, 204, 'DELETE agents/<uid>/token');
my ($hs) = $t->http_post(
    $t->a2s('instance_uid: "' . uid_escape(pack 'H*', $U =~ s/-//gr)
            . '" sequence_num: 1 capabilities: 1'),
    Authorization => "Bearer $tok");
is($hs, 403, 'then its token is refused');

OpAMPInterop::stop_collectors($otelcol, $t->dir);
$t->done;
done_testing;
