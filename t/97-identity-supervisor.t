#!/usr/bin/perl

# Interop: agent identity and server-set attributes (docs/security.md)
# with the real OpAMP supervisor and its collector (built by `make
# interop-tools`, as t/94), over WebSocket.  nginx takes the identity
# and a tenant from headers the supervisor is configured to send (as an
# auth_request subrequest would set them):
#
# * supervisor A (identity site-a, tenant blue for nginx, tenant red in
#   its own description) registers, is bound to its uid, is owed the
#   config of the group that selects tenant=blue and applies it;
# * supervisor B (identity site-b, tenant red for nginx, claiming tenant
#   blue in its description, identifying and not) is owed nothing;
# * B restarted with A's uid in its persisted state is refused: the
#   supervisor logs the server's error, the uid stays bound to site-a,
#   nothing of B is stored under it, A stays connected and goes on
#   reporting, and the refusal is logged and counted.
#
# Skips (saying so) only on a machine without Go; see t/lib/OpAMPInterop.pm.

use strict;
use warnings;

use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use JSON::PP;
use Time::HiRes qw(time sleep);

use OpAMPTest qw(:DEFAULT write_file file_text);
use OpAMPInterop;

my $supervisor = OpAMPInterop::need('opampsupervisor');
my $otelcol = OpAMPInterop::need('otelcol');

my $t = OpAMPTest->new;
$t->start_redis;
my $d = $t->dir;

# a test CA and a server certificate for 127.0.0.1; another CA
OpAMPTest::make_certs($d, server => 'subjectAltName=IP:127.0.0.1');

my $IDENT = '
            opamp_heartbeat_interval 1s;
            opamp_agent_identity $http_x_agent_id;
            opamp_agent_attribute tenant $http_x_tenant;';
my $TLS_PORT = OpAMPTest::free_port();
$t->start_nginx('
        location /admin/ { opamp_admin; }
        location = /metrics { opamp_metrics; }',
    workers => 2, location => $IDENT, http => "
    server {
        listen 127.0.0.1:$TLS_PORT ssl;
        ssl_certificate $d/server.crt;
        ssl_certificate_key $d/server.key;
        access_log $d/logs/tls-access.log;
        location = /v1/opamp {
            opamp;$IDENT
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

sub key_of { my ($uid) = @_; return "opamp:agent:{$uid}" }

sub hget { my ($uid, $f) = @_; return $t->redis('HGET', key_of($uid), $f) }

END {
    OpAMPInterop::stop_collectors($otelcol, $t->dir)
        if $t && ($t->{owner} // 0) == $$;
}

sub metric {
    my ($name) = @_;
    my (undef, undef, $b) = $t->http_post('', -method => 'GET',
                                          -path => '/metrics');
    return $b =~ /^\Q$name\E (\d+)$/m ? $1 : undef;
}

# the group's config, marked by its pipeline's name
my $BLUE = "receivers:\n  nop:\nexporters:\n  debug:\nservice:\n"
           . "  pipelines:\n    metrics/blue:\n      receivers: [nop]\n"
           . "      exporters: [debug]\n";
my ($gst) = api('PUT', 'configs/groups/blue',
                $json->encode({ selector => 'tenant=blue', priority => 1,
                                files => { 'blue.yaml' => {
                                    body => $BLUE,
                                    content_type => 'text/yaml' } } }));
is($gst, 200, 'a group selects tenant=blue');

# a supervisor of its own directory: identity, nginx's tenant, the
# tenant it claims, the uid it starts with
sub supervisor {
    my ($name, $who, $tenant, $claim, $uid, $caps) = @_;
    $caps //= '';
    my $dir = $t->dir . "/sup-$name";
    mkdir $dir;
    mkdir "$dir/storage";
    write_file("$dir/storage/persistent_state.yaml", "instance_id: $uid\n");
    write_file("$dir/telemetry.yaml",
               "service:\n  telemetry:\n    metrics:\n      level: none\n");
    write_file("$dir/supervisor.yaml", <<"EOF");
server:
  endpoint: ws://127.0.0.1:${\ $t->port}/v1/opamp
  headers:
    X-Agent-Id: [$who]
    X-Tenant: [$tenant]
capabilities:
  accepts_remote_config: true
  reports_remote_config: true
  reports_effective_config: true
  reports_health: true
  reports_heartbeat: true
${caps}agent:
  executable: $otelcol
  validate_config: true
  args: [--config, $dir/telemetry.yaml]
  config_apply_timeout: 30s
  bootstrap_timeout: 60s
  description:
    identifying_attributes:
      tenant: $claim
    non_identifying_attributes:
      tenant: $claim
storage:
  directory: $dir/storage
telemetry:
  logs:
    level: debug
    output_paths: [$dir/supervisor.log]
    error_output_paths: [$dir/supervisor.log]
EOF
    my $sup = OpAMPInterop->spawn([ $supervisor, '--config',
                                    "$dir/supervisor.yaml" ],
                                  log => "$dir/stderr.log", dir => $dir);
    return ($sup, $dir);
}

my ($UA, $UB) = (OpAMPInterop::uuid4(), OpAMPInterop::uuid4());

# --- A: bound, selected by what nginx says ----------------------------------

my ($a, $adir) = supervisor('a', 'site-a', 'blue', 'red', $UA);
ok($t->wait_for(sub { defined hget($UA, 'identity')
                      && $t->redis('EXISTS', "opamp:status:{$UA}") }, 120),
   'supervisor A registered')
    or diag(`tail -20 $adir/supervisor.log`);
is(hget($UA, 'identity'), 'site-a', 'its uid is bound to its identity');
is(hget($UA, 'desired_config'), 'group:blue',
   'nginx says tenant blue, the collector says red: it is owed the blue '
   . 'group');
ok($t->wait_for(sub { (hget($UA, 'config_status') // '') eq 'APPLIED' }, 120),
   'and its collector applies it')
    or diag(`tail -20 $adir/supervisor.log`);
my (undef, $ad) = api('GET', "agents/$UA");
is_deeply($ad->{server_attributes}, { tenant => 'blue' },
          'the admin API shows the server-set attribute');
is($ad->{attributes}{tenant}, 'blue', 'winning in the attributes selectors '
   . 'see');

# --- B: claims blue, nginx says red -------------------------------------------

my ($b, $bdir) = supervisor('b', 'site-b', 'red', 'blue', $UB);
ok($t->wait_for(sub { defined hget($UB, 'identity')
                      && $t->redis('EXISTS', "opamp:status:{$UB}") }, 120),
   'supervisor B registered')
    or diag(`tail -20 $bdir/supervisor.log`);
is(hget($UB, 'desired_config') // '', '',
   'claiming tenant blue in its description, it is owed nothing');
$b->stop('INT', 20);
OpAMPInterop::stop_collectors($otelcol, $bdir);

# --- B again, with A's uid ------------------------------------------------------

my $conflicts0 = metric('opamp_identity_conflicts_total') // 0;
# A's messages: those that reached Redis, and the heartbeats its worker
# answered itself (opamp_heartbeat_recheck; B's, refused, never are)
sub messages_of_a {
    return (hget($UA, 'sequence_num') // 0)
           + (metric('opamp_heartbeats_in_worker_total') // 0);
}
my $seq0 = messages_of_a();
unlink "$bdir/supervisor.log";
($b) = supervisor('b', 'site-b', 'red', 'blue', $UA);
ok($t->wait_for(sub {
       file_text("$bdir/supervisor.log")
           =~ /Server returned an error response.*instance_uid is bound to another agent identity/ }, 120),
   'supervisor B presenting A\'s uid gets the server\'s refusal')
    or diag(`tail -20 $bdir/supervisor.log`);
is(hget($UA, 'identity'), 'site-a', 'the uid stays bound to A');
ok($t->wait_for(sub { messages_of_a() > $seq0 + 2 }, 30),
   'A stays connected and goes on reporting under it');
is(hget($UA, 'desired_config'), 'group:blue', 'still owed its group');
ok((metric('opamp_identity_conflicts_total') // 0) > $conflicts0,
   'the refusals are counted');
like($t->error_log, qr/\[warn\].*opamp: instance_uid is bound to another identity than "site-b", refused/,
     'and logged, naming the identity');

$b->stop('INT', 20);
OpAMPInterop::stop_collectors($otelcol, $bdir);

# --- C: OpAMP connection settings to a TLS endpoint --------------------------
#
# The supervisor rebuilds its server connection from an accepted offer:
# the offer's headers replace its own, and it verifies the server only
# if the offer has a certificate, which the admin API requires for a
# wss:// endpoint.  C moves to the TLS server with the headers it needs
# (its identity stays the same) and the CA that verifies it; an offer
# with another CA then fails its TLS handshake: it still verifies.

my $UC = OpAMPInterop::uuid4();
my ($c, $cdir) = supervisor('c', 'site-c', 'red', 'red', $UC,
                            "  accepts_opamp_connection_settings: true\n");
ok($t->wait_for(sub { defined hget($UC, 'identity') }, 120),
   'supervisor C registered over ws://')
    or diag(`tail -20 $cdir/supervisor.log`);

sub pem { my ($f) = @_; return file_text("$d/$f") }

sub tls_offer {
    my ($ca) = @_;
    return $json->encode({ opamp => {
        destination_endpoint => "wss://127.0.0.1:$TLS_PORT/v1/opamp",
        headers => { headers => [ { key => 'X-Agent-Id', value => 'site-c' },
                                  { key => 'X-Tenant', value => 'blue' } ] },
        certificate => { ca_cert => pem($ca) } } });
}

my ($ost, $ob) = api('PUT', "connection-settings/agents/$UC",
                     $json->encode({ opamp => {
                         destination_endpoint =>
                             "wss://127.0.0.1:$TLS_PORT/v1/opamp" } }));
is($ost, 400, 'an offer to wss:// without the CA is refused');
($ost) = api('PUT', "connection-settings/agents/$UC", tls_offer('ca.crt'));
is($ost, 200, 'an offer to wss:// with its CA and the headers is stored');
$t->redis('PUBLISH', "opamp:fleet", 'config');
ok($t->wait_for(sub { file_text("$d/logs/tls-access.log") =~ m{GET /v1/opamp HTTP/1.1" 101} }, 60),
   'C reconnects to the TLS endpoint, verifying it with the offered CA')
    or diag(`tail -20 $cdir/supervisor.log`);
ok($t->wait_for(sub { (hget($UC, 'desired_config') // '') eq 'group:blue' },
                30),
   'with the offered headers: nginx now says tenant blue');
is(hget($UC, 'identity'), 'site-c', 'and its identity is the same');

my $log_at = length file_text("$cdir/supervisor.log");
($ost) = api('PUT', "connection-settings/agents/$UC", tls_offer('ca2.crt'));
is($ost, 200, 'an offer with another CA is stored');
ok($t->wait_for(sub {
       substr(file_text("$cdir/supervisor.log"), $log_at)
           =~ /certificate signed by unknown authority/ }, 60),
   'C, offered another CA, refuses the server\'s certificate: it still '
   . 'verifies TLS')
    or diag(`tail -20 $cdir/supervisor.log`);

$c->stop('INT', 20);
$a->stop('INT', 20);
OpAMPInterop::stop_collectors($otelcol, $t->dir);

$t->done;
done_testing;
