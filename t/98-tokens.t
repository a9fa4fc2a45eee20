#!/usr/bin/perl

# Per-agent tokens (docs/security.md, Tokens): with opamp_enrollment_token
# an agent presents a Bearer token; the enrollment credential is traded
# for a token of the agent's own, offered in the operator's OpAMP
# connection settings (its other headers kept, its Authorization
# replaced), kept in Redis only as a SHA-256; the next token becomes the
# token when the agent presents it, and the old one is good no more;
# DELETE agents/<uid>/token revokes on every host at once, and the
# enrollment credential is refused for that uid from then on; with
# opamp_token_reenroll on an agent that lost its token enrolls again.
# No credential: 401 before anything is read; a wrong one: 403; both with
# the reason in the error log and counted.  A fleet change pushed to a
# WebSocket agent with a token never carries an OpAMP offer without one.

use strict;
use warnings;

use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use Digest::SHA qw(sha256_hex);

use OpAMPTest;
use OpAMPFleet;

my $ta = OpAMPTest->new;
$ta->start_redis;
my $tb = OpAMPTest->new(redis_port => $ta->redis_port);

my $LOCS = '
        location = /v1/opamp-again {
            opamp;
            opamp_enrollment_token enroll-secret;
            opamp_token_reenroll on;
        }
        location /admin/ { opamp_admin; }
        location = /metrics { opamp_metrics; }';
my $LOC = '
            opamp_enrollment_token $http_x_enroll_key;';
$ta->start_nginx($LOCS, workers => 1, location => $LOC,
                 http => 'opamp_server_id host-a;
    map $http_host $http_x_enroll_key { default enroll-secret; }');
$tb->start_nginx($LOCS, workers => 1, location => $LOC,
                 http => 'opamp_server_id host-b;
    map $http_host $http_x_enroll_key { default enroll-secret; }');

my $CAPS = 1 | 0x100 | 0x2000;   # status, OpAMP settings, heartbeats
my $DESC = 'agent_description { identifying_attributes { key: '
    . '"service.name" value { string_value: "edge" } } }';

sub msg {
    my ($uid, $text) = @_;
    return $ta->a2s('instance_uid: "' . uid_escape($uid) . '" ' . $text);
}

# one plain HTTP message with credential $cred (undef: none)
sub post {
    my ($t, $cred, $bytes, %h) = @_;
    my ($s, $hd, $b) = $t->http_post($bytes,
        defined $cred ? (Authorization => "Bearer $cred") : (), %h);
    my $text = $s == 200 ? (eval { $t->s2a_text($b) } // '') : '';
    return ($s, $text, $b);
}

sub agent_key { 'opamp:agent:{' . uid_text($_[0]) . '}' }

sub metric {
    my ($t, $name) = @_;
    my (undef, undef, $b) = $t->http_post('', -method => 'GET',
                                          -path => '/metrics');
    return $b =~ /^\Q$name\E (\d+)$/m ? $1 : undef;
}

# the token of an offer's Authorization header
sub offered_token {
    my ($text) = @_;
    return $text =~ /key: "Authorization"\s*value: "Bearer ([A-Za-z0-9_-]+)"/
           ? $1 : undef;
}

sub put_settings {
    my ($tenant) = @_;
    my ($st) = $ta->http_post(
        '{"opamp": {"destination_endpoint": "http://127.0.0.1:'
        . $ta->port . '/v1/opamp", "headers": {"headers": ['
        . '{"key": "X-Tenant", "value": "' . $tenant . '"}, '
        . '{"key": "authorization", "value": "Bearer shared"}]}}}',
        -method => 'PUT', -path => '/admin/connection-settings',
        'Content-Type' => 'application/json');
    return $st;
}

is(put_settings('blue'), 200, 'the operator stores an OpAMP settings offer');

# --- no or a malformed credential: 401 ------------------------------------------

my $U = random_uid();
my ($st, $hd) = $ta->http_post(msg($U, "sequence_num: 0 capabilities: $CAPS"));
is($st, 401, 'no credential: 401');
is($hd->{'www-authenticate'}, 'Bearer', 'naming the Bearer scheme');
ok($ta->wait_for(sub { $ta->error_log =~ /opamp: 401 response: no Authorization header/ }),
   'the reason in the error log');
($st) = $ta->http_post(msg($U, "sequence_num: 0 capabilities: $CAPS"),
                       Authorization => 'Basic ZW5yb2xs');
is($st, 401, 'no Bearer token: 401');
my $ws = OpAMPFleet->connect_ws(port => $ta->port, refused => 1);
like($ws, qr{^HTTP/1\.1 401}, 'a WebSocket handshake without one: 401');
like($ws, qr{^WWW-Authenticate: Bearer\r?$}mi, 'naming the Bearer scheme');
is($ta->redis('EXISTS', agent_key($U)), 0, 'nothing stored');
is(metric($ta, 'opamp_token_refusals_total'), 3, 'each counted');

# --- enrollment: the shared credential traded for a token ----------------------

my $text;
($st, $text) = post($ta, 'enroll-secret',
                    msg($U, "sequence_num: 0 capabilities: $CAPS $DESC"));
is($st, 200, 'the enrollment credential is taken for a new uid');
my $T1 = offered_token($text);
ok(defined $T1 && length $T1 == 43, 'the agent is offered a token of its own')
    or diag $text;
like($text, qr/destination_endpoint: "http:/, 'in the operator\'s opamp offer');
like($text, qr/key: "X-Tenant"\s*value: "blue"/, 'with its other headers');
unlike($text, qr/Bearer shared/, 'but its Authorization replaced');
is($ta->redis('HGET', agent_key($U), 'token_next_sha256'), sha256_hex($T1 // ''),
   'Redis keeps the token\'s SHA-256 as the next token');
my %h = @{ $ta->redis('HGETALL', agent_key($U)) };
ok(!grep({ index($_, $T1 // 'x') >= 0 } values %h),
   'and never the token itself');
my ($hash1) = $text =~ /connection_settings \{\s*hash: "((?:[^"\\]|\\.)*)"/;

# the enrollment credential again, before the token is used: no second
# token while the first is on its way
($st, $text) = post($ta, 'enroll-secret',
                    msg($U, "sequence_num: 1 capabilities: $CAPS"));
is($st, 200, 'the enrollment credential again while the token is on its way');
ok(!defined offered_token($text), 'is offered no second token');

($st, $text) = post($ta, $T1, msg($U, "sequence_num: 2 capabilities: $CAPS "
    . 'connection_settings_status { last_connection_settings_hash: "'
    . ($hash1 // '') . '" status: ConnectionSettingsStatuses_APPLIED }'));
is($st, 200, 'the agent comes back with its token');
is($ta->redis('HGET', agent_key($U), 'token_sha256'), sha256_hex($T1),
   'which becomes its token');
is($ta->redis('HGET', agent_key($U), 'token_next_sha256'), undef,
   'none on its way');
ok(!defined offered_token($text), 'and it is offered nothing again');

# --- refusals: 403 --------------------------------------------------------------

($st) = post($ta, 'enroll-secret', msg($U, "sequence_num: 3 capabilities: $CAPS"));
is($st, 403, 'the enrollment credential for a uid with a token: 403');
ok($ta->wait_for(sub { $ta->error_log =~ /opamp: 403 refused: the enrollment credential is not taken/ }),
   'the reason in the error log');
($st) = post($ta, 'x' x 43, msg($U, "sequence_num: 3 capabilities: $CAPS"));
is($st, 403, 'a wrong token: 403');
ok($ta->wait_for(sub { $ta->error_log =~ /opamp: 403 refused: the token is not this instance_uid's/ }),
   'the reason in the error log');
my $V = random_uid();
($st) = post($ta, $T1, msg($V, "sequence_num: 0 capabilities: $CAPS"));
is($st, 403, 'a token under another uid: 403');
is($ta->redis('EXISTS', agent_key($V)), 0, 'nothing stored under it');
is($ta->redis('HGET', agent_key($U), 'sequence_num'), '2',
   'nor under the token\'s uid');

# a heartbeat with a wrong token leaves the short way (the beat mark)
($st) = post($ta, $T1, msg($U, "sequence_num: 3 capabilities: $CAPS"));
is($st, 200, 'a heartbeat with the token');
ok($ta->redis('HGET', agent_key($U), 'settled'), 'settles');
($st) = post($ta, 'y' x 43, msg($U, "sequence_num: 4 capabilities: $CAPS"));
is($st, 403, 'a heartbeat with a wrong token is refused all the same');
is(metric($ta, 'opamp_token_refusals_total'), 7, 'each refusal counted');

# --- rotation on two hosts -------------------------------------------------------

is(put_settings('green'), 200, 'the operator changes the offer');
($st, $text) = post($tb, $T1, msg($U, "sequence_num: 4 capabilities: $CAPS"));
is($st, 200, 'the token is taken on the other host');
my $T2 = offered_token($text);
ok(defined $T2 && $T2 ne $T1, 'which offers the new settings with a new token');
like($text, qr/value: "green"/, 'the new settings');
my ($hash2) = $text =~ /connection_settings \{\s*hash: "((?:[^"\\]|\\.)*)"/;
ok(defined $hash2 && $hash2 ne ($hash1 // ''), 'under another hash');
($st) = post($ta, $T1, msg($U, "sequence_num: 5 capabilities: $CAPS"));
is($st, 200, 'the old token stays good until the new one is used');
($st) = post($ta, $T2, msg($U, "sequence_num: 6 capabilities: $CAPS"));
is($st, 200, 'the new one is taken');
($st) = post($tb, $T1, msg($U, "sequence_num: 7 capabilities: $CAPS"));
is($st, 403, 'then the old one is refused, on either host');
is($ta->redis('HGET', agent_key($U), 'token_sha256'), sha256_hex($T2),
   'the token is the new one');

# --- revocation -------------------------------------------------------------------

my $W = random_uid();
my $ag = OpAMPFleet->connect_ws(port => $tb->port,
                                headers => { Authorization => "Bearer $T2" });
$ag->send_msg(msg($U, "sequence_num: 7 capabilities: $CAPS"));
ok(defined $ag->recv_msg(10), 'the agent is connected to host b by WebSocket');
# heartbeat 8 settles it in Redis, and its worker answers 9 itself
# (opamp_heartbeat_recheck)
for my $seq (8, 9) {
    $ag->send_msg(msg($U, "sequence_num: $seq capabilities: $CAPS"));
    $ag->recv_msg(10);
}
is($ta->redis('HGET', agent_key($U), 'sequence_num'), 8,
   'settled: host b\'s worker answered its last heartbeat itself');
($st) = $ta->http_post('', -method => 'DELETE',
                       -path => '/admin/agents/' . uid_text($U) . '/token');
is($st, 204, 'DELETE agents/<uid>/token on host a');
like($ta->redis('HGET', agent_key($U), 'token_revoked_ms') // '', qr/^\d{13}$/,
     'token_revoked_ms set');
my (undef, undef, $ab) = $ta->http_post('', -method => 'GET',
                                        -path => '/admin/agents/'
                                                 . uid_text($U));
like($ab, qr/"token_revoked_ms":\d{13}[,}]/, 'GET agents/<uid> shows it');
($st, undef, $ab) = $ta->http_post('', -method => 'GET',
    -path => '/admin/audit?target=agent:' . uid_text($U));
like($ab, qr{"method":"DELETE","path":"/admin/agents/\Q${\ uid_text($U)}\E/token","target":"agent:\Q${\ uid_text($U)}\E","status":204},
     'the revocation is in the audit log');
$ag->send_msg(msg($U, "sequence_num: 10 capabilities: $CAPS"));
my $m = $ag->recv_msg(10);
like(OpAMPFleet::decode('ServerToAgent', $m // ''),
     qr/error_response \{.*token was revoked/s,
     'the agent\'s next heartbeat on host b is refused');
ok(!defined $ag->recv_msg(10) && ($ag->{closed} // '') eq '1008',
   'and its connection closed with 1008');
($st) = post($ta, 'enroll-secret', msg($U, "sequence_num: 0 capabilities: $CAPS"));
is($st, 403, 'the enrollment credential reused after revocation: 403');
($st) = post($tb, 'enroll-secret', msg($U, "sequence_num: 0 capabilities: $CAPS"),
             -path => '/v1/opamp-again');
is($st, 403, 'even where opamp_token_reenroll is on');
($st) = $ta->http_post('', -method => 'DELETE',
                       -path => '/admin/agents/' . uid_text(random_uid())
                                . '/token');
is($st, 404, 'DELETE agents/<uid>/token of an unknown agent: 404');

# --- a lost token: opamp_token_reenroll ------------------------------------------

($st, $text) = post($ta, 'enroll-secret',
                    msg($W, "sequence_num: 0 capabilities: $CAPS"),
                    -path => '/v1/opamp-again');
my $L1 = offered_token($text);
my ($lh1) = $text =~ /connection_settings \{\s*hash: "((?:[^"\\]|\\.)*)"/;
($st) = post($ta, $L1 // '', msg($W, "sequence_num: 1 capabilities: $CAPS"),
             -path => '/v1/opamp-again');
is($st, 200, 'an agent enrolls where opamp_token_reenroll is on');
($st, $text) = post($ta, 'enroll-secret',
                    msg($W, "sequence_num: 0 capabilities: $CAPS"),
                    -path => '/v1/opamp-again');
is($st, 200, 'having lost its token it enrolls again there');
my $L2 = offered_token($text);
ok(defined $L2 && $L2 ne ($L1 // ''), 'and is offered a new one');
my ($lh2) = $text =~ /connection_settings \{\s*hash: "((?:[^"\\]|\\.)*)"/;
ok(defined $lh2 && $lh2 ne ($lh1 // ''),
   'under another hash than the same settings with its first token (the '
   . 'supervisor skips an offer of the hash it had)');
($st) = post($ta, 'enroll-secret',
             msg($W, "sequence_num: 1 capabilities: $CAPS"));
is($st, 403, 'but not where opamp_token_reenroll is off');

# --- a fleet change pushed to a WebSocket agent with a token ---------------------

my $P = random_uid();
my $pa = OpAMPFleet->connect_ws(port => $ta->port,
    headers => { Authorization => 'Bearer enroll-secret' });
$pa->send_msg(msg($P, "sequence_num: 0 capabilities: $CAPS"));
my $P1 = offered_token(OpAMPFleet::decode('ServerToAgent',
                                          $pa->recv_msg(10) // ''));
ok(defined $P1, 'a WebSocket agent enrolls');
$pa->close;
$pa = OpAMPFleet->connect_ws(port => $ta->port,
    headers => { Authorization => "Bearer $P1" });
$pa->send_msg(msg($P, "sequence_num: 1 capabilities: $CAPS"));
ok(defined $pa->recv_msg(10), 'and connects again with its token');
$pa->send_msg(msg($P, "sequence_num: 2 capabilities: $CAPS"));
ok(defined $pa->recv_msg(10), 'heartbeats');
is(put_settings('red'), 200, 'the operator changes the offer');
# and has the workers look at their agents at once (t/97 does the same)
$ta->redis('PUBLISH', 'opamp:fleet', 'config');
$m = $pa->recv_msg(3);
unlike(OpAMPFleet::decode('ServerToAgent', $m // ''), qr/connection_settings/,
       'no OpAMP offer without a token is pushed to it');
ok(!defined $ta->redis('HGET', agent_key($P), 'settled')
   || $ta->redis('HGET', agent_key($P), 'settled') eq '',
   'its next message is sent the long way');
$pa->send_msg(msg($P, "sequence_num: 3 capabilities: $CAPS"));
$text = OpAMPFleet::decode('ServerToAgent', $pa->recv_msg(10) // '');
like($text, qr/value: "red"/, 'where the new offer goes out');
ok(defined offered_token($text), 'with a new token');

$tb->done;
$ta->done;
done_testing;
