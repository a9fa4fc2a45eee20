#!/usr/bin/perl

# Agents are who nginx says they are (docs/security.md): the first
# identity (opamp_agent_identity) that reports an instance uid owns it; a
# message of another identity under that uid is refused (403 over plain
# HTTP, a ServerErrorResponse and close 1008 over WebSocket), on the long
# way and on the short way alike, with nothing of it stored and the
# owner's connection left alone, or given a new uid
# (opamp_agent_identity_conflict new_uid); logged and counted.  An empty
# identity is refused with 403 before anything is read.  The admin API
# shows the binding and releases it.  Server-set attributes
# (opamp_agent_attribute) win over what an agent says of itself, for
# selectors in Redis (a plain HTTP agent, report.lua) and in the worker
# (a fleet change decided by the worker for its WebSocket agents), and
# show in the admin API.

use strict;
use warnings;

use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";

use OpAMPTest;
use OpAMPFleet;

my $t = OpAMPTest->new;
$t->start_redis;
$t->start_nginx('
        location = /v1/opamp-new {
            opamp;
            opamp_agent_identity $http_x_agent_id;
            opamp_agent_identity_conflict new_uid;
        }
        location = /v1/opamp-open { opamp; }
        location /admin/ { opamp_admin; }
        location = /metrics { opamp_metrics; }',
    location => '
            opamp_agent_identity $http_x_agent_id;
            opamp_agent_attribute tenant $http_x_tenant;');

sub msg {
    my ($uid, $text) = @_;
    return $t->a2s('instance_uid: "' . uid_escape($uid) . '" ' . $text);
}

# one plain HTTP message as agent $who (undef: no identity header)
sub post {
    my ($who, $bytes, %h) = @_;
    my ($s, $hd, $b) = $t->http_post($bytes,
                                     defined $who ? ('X-Agent-Id' => $who)
                                                  : (), %h);
    my $text = eval { $t->s2a_text($b) } // '';
    return ($s, $text, $b);
}

sub agent_key { 'opamp:agent:{' . uid_text($_[0]) . '}' }

sub metric {
    my ($name) = @_;
    my (undef, undef, $b) = $t->http_post('', -method => 'GET',
                                          -path => '/metrics');
    return $b =~ /^\Q$name\E (\d+)$/m ? $1 : undef;
}

my $DESC = 'agent_description { identifying_attributes { key: '
    . '"service.name" value { string_value: "edge" } } }';

# --- a plain HTTP agent binds its uid ---------------------------------------

my $U = random_uid();
my ($st, $text) = post('alice', msg($U, "sequence_num: 0 capabilities: 1 "
                                        . $DESC));
is($st, 200, 'the first identity that reports a uid is answered');
unlike($text, qr/error_response/, 'without an error');
is($t->redis('HGET', agent_key($U), 'identity'), 'alice',
   'the uid is bound to the identity in the agent hash');
like($t->redis('HGET', agent_key($U), 'identity_bound_ms') // '',
     qr/^\d{13}$/, 'with the time it was bound');

($st, $text) = post('alice', msg($U, 'sequence_num: 1 capabilities: 1'));
is($st, 200, 'its owner goes on reporting under it');
is($t->redis('HGET', agent_key($U), 'sequence_num'), '1',
   'and its sequence is stored');

# another identity under the same uid: the long way (a description)
my $conflicts0 = metric('opamp_identity_conflicts_total') // 0;
($st, $text) = post('mallory', msg($U, "sequence_num: 2 capabilities: 1 "
                                       . $DESC));
is($st, 403, 'another identity reporting the uid gets 403');
like($text, qr/error_response \{.*message: "instance_uid is bound to another agent identity"/s,
     'with a ServerErrorResponse that says why');
is($t->redis('HGET', agent_key($U), 'sequence_num'), '1',
   'nothing of its message is stored');
is($t->redis('HGET', agent_key($U), 'identity'), 'alice',
   'and the uid stays bound to its owner');
ok($t->wait_for(sub {
       $t->error_log =~ /\[warn\].*opamp: instance_uid is bound to another identity than "mallory", refused/ }),
   'the refusal is logged on the connection\'s log, naming the identity');
is(metric('opamp_identity_conflicts_total'), $conflicts0 + 1,
   'and counted in opamp_identity_conflicts_total');

# the short way: a bare heartbeat in sequence, which beats.lua would take
# for the owner (it settled), is refused for another identity too
($st) = post('alice', msg($U, 'sequence_num: 2 capabilities: 1'));
is($st, 200, 'the owner\'s heartbeat is answered');
ok(defined $t->redis('HGET', agent_key($U), 'settled'),
   'and the owner is settled: its heartbeats take the short way');
# the long way writes server_id at every message, the short way never
$t->redis('HSET', agent_key($U), server_id => 'marker');
($st, $text) = post('mallory', msg($U, 'sequence_num: 3 capabilities: 1'));
is($st, 403, 'a heartbeat in sequence from another identity gets 403 too');
is($t->redis('HGET', agent_key($U), 'sequence_num'), '2',
   'and is not stored');
$t->redis('CONFIG', 'SET', 'slowlog-log-slower-than', 0);
$t->redis('SLOWLOG', 'RESET');
($st) = post('alice', msg($U, 'sequence_num: 3 capabilities: 1'));
is($st, 200, 'the owner\'s next heartbeat is still answered');
my $slow = $t->redis('SLOWLOG', 'GET', 1000);
$t->redis('CONFIG', 'SET', 'slowlog-log-slower-than', 10000);
is(scalar(grep { my $c = $_->[3];
                 ($c->[0] // '') =~ /^EVAL/ && ($c->[2] // '') eq '5'
                 && ($c->[3] // '') eq agent_key($U) } @$slow), 0,
   'in the worker\'s batch of heartbeats (beats.lua), no report.lua call');
is($t->redis('HGET', agent_key($U), 'sequence_num'), '3',
   'and stored');
is($t->redis('HGET', agent_key($U), 'server_id'), 'marker',
   'by the short way: the identity costs the owner\'s heartbeats nothing');

# --- an empty identity --------------------------------------------------------

($st, undef, my $body) = post(undef, msg(random_uid(),
                                         'sequence_num: 0 capabilities: 1'));
is($st, 403, 'a message without an identity gets 403');
like($body, qr/opamp: the agent identity \(opamp_agent_identity\) is empty/,
     'saying why');
ok($t->wait_for(sub { $t->error_log =~ /opamp: 403 response: the agent identity \(opamp_agent_identity\) is empty/ }),
   'and the reason is in the error log');
my $head = OpAMPFleet->connect_ws(port => $t->port, refused => 1);
like($head, qr{^HTTP/1\.1 403}, 'a WebSocket handshake without one too');
($st, undef, $body) = post('x' x 1025, msg(random_uid(),
                                           'sequence_num: 0 capabilities: 1'));
is($st, 403, 'an identity over 1024 bytes gets 403');
like($body, qr/longer than 1024 bytes/, 'saying why');
($st) = post('x' x 1024, msg(random_uid(), 'sequence_num: 0 capabilities: 1'));
is($st, 200, 'one of 1024 bytes is taken');
($st, undef, $body) = post('carol', msg(random_uid(),
                                        'sequence_num: 0 capabilities: 1'),
                           'X-Tenant' => "\xff\xfe");
is($st, 403, 'a server-set attribute that is no UTF-8 text gets 403');
like($body, qr/opamp_agent_attribute/, 'saying why');

# a location without opamp_agent_identity neither checks nor binds
# (docs/security.md: every OpAMP location of a fleet should have it)
($st) = post('mallory', msg($U, 'sequence_num: 4 capabilities: 1'),
             -path => '/v1/opamp-open');
is($st, 200, 'a location without opamp_agent_identity does not check');
is($t->redis('HGET', agent_key($U), 'identity'), 'alice',
   'nor change the binding');

# --- WebSocket ----------------------------------------------------------------

my $W = random_uid();
my $owner = OpAMPFleet->connect_ws(port => $t->port,
                                   headers => { 'X-Agent-Id' => 'bob' });
$owner->send_msg(msg($W, "sequence_num: 0 capabilities: 1 $DESC"));
ok(defined $owner->recv_msg(10), 'a WebSocket agent binds its uid');
is($t->redis('HGET', agent_key($W), 'identity'), 'bob', 'to its identity');

my $thief = OpAMPFleet->connect_ws(port => $t->port,
                                   headers => { 'X-Agent-Id' => 'mallory' });
$thief->send_msg(msg($W, "sequence_num: 1 capabilities: 1 $DESC"));
my $m = $thief->recv_msg(10);
like(OpAMPFleet::decode('ServerToAgent', $m // ''),
     qr/error_response \{.*instance_uid is bound to another agent identity/s,
     'another identity on WebSocket gets a ServerErrorResponse');
ok(!defined $thief->recv_msg(10) && ($thief->{closed} // '') eq '1008',
   'and its connection is closed with 1008');
$owner->send_msg(msg($W, 'sequence_num: 1 capabilities: 1'));
ok(defined $owner->recv_msg(10), 'the owner was not taken over: it is '
   . 'answered on its connection');
is($t->redis('HGET', agent_key($W), 'sequence_num'), '1',
   'and its sequence is the one stored');

# released while connected and settled (heartbeat 1 found it owed nothing
# in Redis, its worker answered 2 and 3 itself: opamp_heartbeat_recheck):
# its next heartbeat binds the uid again
for my $seq (2, 3) {
    $owner->send_msg(msg($W, "sequence_num: $seq capabilities: 1"));
    $owner->recv_msg(10);
}
is($t->redis('HGET', agent_key($W), 'sequence_num'), '1',
   'settled: the worker answered the last heartbeats itself');
my ($rst) = $t->http_post('', -method => 'DELETE',
                          -path => '/admin/agents/' . uid_text($W)
                                   . '/identity');
is($rst, 204, 'the WebSocket agent\'s binding released');
$owner->send_msg(msg($W, 'sequence_num: 4 capabilities: 1'));
ok(defined $owner->recv_msg(10), 'its next heartbeat is answered');
is($t->redis('HGET', agent_key($W), 'identity'), 'bob',
   'and binds the uid again');

# --- opamp_agent_identity_conflict new_uid ------------------------------------

($st, $text) = post('mallory', msg($U, "sequence_num: 0 capabilities: 1 "
                                       . $DESC), -path => '/v1/opamp-new');
is($st, 200, 'with new_uid, another identity is answered');
my ($new) = $text =~ /agent_identification \{\s*new_instance_uid: "((?:[^"\\]|\\.)*)"/;
ok(defined $new && OpAMPTest::_unescape($new) ne $U,
   'with a new instance_uid');
is($t->redis('HGET', agent_key($U), 'identity'), 'alice',
   'the uid stays bound to its owner');
is($t->redis('HGET', agent_key($U), 'sequence_num'), '4',
   'and nothing of the message is stored under it');
my $N = OpAMPTest::_unescape($new // '');
($st) = post('mallory', msg($N, "sequence_num: 0 capabilities: 1 $DESC"),
             -path => '/v1/opamp-new');
is($st, 200, 'the agent reports under its new uid');
is($t->redis('HGET', agent_key($N), 'identity'), 'mallory',
   'which is bound to its identity');

# --- the admin API ------------------------------------------------------------

my ($ast, undef, $ab) = $t->http_post('', -method => 'GET',
                                      -path => '/admin/agents/'
                                               . uid_text($U));
is($ast, 200, 'GET agents/<uid>');
like($ab, qr/"identity":"alice"/, 'shows the identity the uid is bound to');
like($ab, qr/"identity_bound_ms":\d{13}[,}]/, 'and since when');

($ast) = $t->http_post('', -method => 'DELETE',
                       -path => '/admin/agents/' . uid_text($U) . '/identity');
is($ast, 204, 'DELETE agents/<uid>/identity releases the binding');
is($t->redis('HGET', agent_key($U), 'identity'), undef,
   'the uid is bound to nothing');
($ast, undef, $ab) = $t->http_post('', -method => 'DELETE',
                                   -path => '/admin/agents/' . uid_text($U)
                                            . '/identity');
is($ast, 404, 'a second DELETE finds nothing to release');
($ast) = $t->http_post('', -method => 'DELETE',
                       -path => '/admin/agents/' . uid_text(random_uid())
                                . '/identity');
is($ast, 404, 'nor does one of an unknown agent');
($ast, undef, $ab) = $t->http_post('', -method => 'GET',
                                   -path => '/admin/audit?target=agent:'
                                            . uid_text($U));
like($ab, qr{"method":"DELETE","path":"/admin/agents/\Q${\ uid_text($U)}\E/identity","target":"agent:\Q${\ uid_text($U)}\E","status":204},
     'the release is in the audit log');

($st) = post('mallory', msg($U, 'sequence_num: 5 capabilities: 1'));
is($st, 200, 'once released, the next identity that reports the uid is '
   . 'answered');
is($t->redis('HGET', agent_key($U), 'identity'), 'mallory',
   'and owns it');

# --- server-set attributes ---------------------------------------------------

my ($gst) = $t->http_post(
    '{"selector":"tenant=blue","priority":1,"files":{"blue.yaml":'
    . '{"body":"blue: 1\\n","content_type":"text/yaml"}}}',
    -method => 'PUT', -path => '/admin/configs/groups/blue',
    'Content-Type' => 'application/json');
is($gst, 200, 'a group selects tenant=blue');
my $BLUE = OpAMPFleet::config_hash('blue.yaml' => [ "blue: 1\n",
                                                     'text/yaml' ]);

sub desc_tenant {
    my ($tenant) = @_;
    return 'agent_description { identifying_attributes { key: "tenant" '
        . 'value { string_value: "' . $tenant . '" } } '
        . 'non_identifying_attributes { key: "tenant" value { '
        . 'string_value: "' . $tenant . '" } } }';
}

# plain HTTP: report.lua resolves the config
my $F = random_uid();
($st, $text) = post('forger', msg($F, 'sequence_num: 0 capabilities: 3 '
                                      . desc_tenant('blue')),
                    'X-Tenant' => 'red');
is($st, 200, 'an agent that claims tenant=blue, which nginx says is red');
unlike($text, qr/remote_config/, 'is not offered the blue group\'s config');
is($t->redis('HGET', agent_key($F), 'desired_config') // '', '',
   'and is owed no config');

my $L = random_uid();
($st, $text) = post('legit', msg($L, 'sequence_num: 0 capabilities: 3 '
                                     . desc_tenant('red')),
                    'X-Tenant' => 'blue');
like($text, qr/remote_config/, 'an agent nginx says is blue, which says '
     . 'red, is offered the blue group\'s config');
is($t->redis('HGET', agent_key($L), 'desired_config'), 'group:blue',
   'it is owed the group');

# nginx changes its mind: the next message resolves the config again
($st, $text) = post('forger', msg($F, 'sequence_num: 1 capabilities: 3'),
                    'X-Tenant' => 'blue');
like($text, qr/remote_config/, 'when nginx sets tenant=blue for the first '
     . 'agent, even without a new description it is offered the config');

($ast, undef, $ab) = $t->http_post('', -method => 'GET',
                                   -path => '/admin/agents/' . uid_text($L));
like($ab, qr/"server_attributes":\{"tenant":"blue"\}/,
     'the admin API shows the server-set attributes');
like($ab, qr/"attributes":\{[^}]*"tenant":"blue"/,
     'and the attributes selectors see, the server-set ones winning');
($ast, undef, $ab) = $t->http_post('', -method => 'GET',
                                   -path => '/admin/agents?attr=tenant=blue');
like($ab, qr/\Q${\ uid_text($L)}\E/, 'the agent list filters on them too');

# WebSocket: the worker decides a fleet change from its own view of the
# agents' attributes (src/ngx_http_opamp_fanout.c)
my $BAR = 'custom_capabilities { capabilities: "io.example.barrier" }';
my %ws;
for (['forger', 'red', 'blue'], ['legit', 'blue', 'red']) {
    my ($name, $server, $claim) = @$_;
    my $ag = OpAMPFleet->connect_ws(port => $t->port,
                                    headers => { 'X-Agent-Id' => "ws-$name",
                                                 'X-Tenant' => $server });
    $ag->{uid} = random_uid();
    $ag->send_msg(msg($ag->{uid}, 'sequence_num: 0 capabilities: 3 '
                                  . desc_tenant($claim) . " $BAR"));
    $ag->recv_msg(10);
    $ws{$name} = $ag;
}
# a new group of higher priority: every agent is matched again
my ($pst) = $t->http_post(
    '{"selector":"tenant=blue","priority":2,"files":{"blue.yaml":'
    . '{"body":"blue: 2\\n","content_type":"text/yaml"}}}',
    -method => 'PUT', -path => '/admin/configs/groups/blue2',
    'Content-Type' => 'application/json');
is($pst, 200, 'a new group selects tenant=blue while WebSocket agents are '
   . 'connected');
my $BLUE2 = OpAMPFleet::config_hash('blue.yaml' => [ "blue: 2\n",
                                                      'text/yaml' ]);
my $got = OpAMPFleet::barrier_received($t, 'opamp:', \%ws, 1);
is($got->{legit}, $BLUE2, 'the agent nginx says is blue gets it');
is($got->{forger}, '', 'the agent that only claims blue gets nothing');

# --- offers that keep agents safe --------------------------------------------

# an OpAMP settings offer to a TLS endpoint carries the CA that verifies
# it: the supervisor turns verification off for an offer without one
for my $c (['{"opamp": {"destination_endpoint": "wss://opamp.example/v1/opamp",'
            . ' "headers": {"headers": [{"key": "authorization", "value": '
            . '"Bearer x"}]}}}', 400, 'wss:// without a certificate'],
           ['{"opamp": {"destination_endpoint": "https://opamp.example/v1/opamp",'
            . ' "certificate": {"cert": "x"}}}', 400,
            'https:// with a certificate but no ca_cert'],
           ['{"opamp": {"destination_endpoint": "wss://opamp.example/v1/opamp",'
            . ' "certificate": {"ca_cert": "-----BEGIN CERTIFICATE-----\\n"}}}',
            200, 'wss:// with certificate.ca_cert'],
           ['{"own_metrics": {"destination_endpoint": '
            . '"https://otlp.example:4318/v1/metrics"}}', 200,
            'another part to an https:// endpoint']) {
    my ($body, $want, $name) = @$c;
    for my $path ('/admin/connection-settings',
                  '/admin/connection-settings/agents/' . uid_text($L)) {
        my ($cst, undef, $cb) = $t->http_post($body, -method => 'PUT',
            -path => $path, 'Content-Type' => 'application/json');
        is($cst, $want, "PUT $path: $name: $want");
        like($cb, qr/needs certificate\.ca_cert/, '  saying why')
            if $want == 400;
    }
}

# --- the directives' limits -------------------------------------------------

sub conf_with {
    my ($loc) = @_;
    return $t->conf_text('', location => $loc);
}

my ($rc, $out) = $t->nginx_t(conf_with('
            opamp_agent_identity $ssl_client_fingerprint;
            opamp_agent_identity_conflict new_uid;
            opamp_agent_attribute ou $ssl_client_s_dn;
            opamp_agent_attribute team "x-$remote_user";'));
is($rc, 0, 'the identity directives take variables') or diag $out;
($rc, $out) = $t->nginx_t(conf_with('
            opamp_agent_identity_conflict steal;'));
like($out, qr/\[emerg\].*invalid value "steal"/,
     'opamp_agent_identity_conflict takes refuse or new_uid');
($rc, $out) = $t->nginx_t(conf_with('
            opamp_agent_attribute a=b x;'));
like($out, qr/\[emerg\] \d+#\d+: invalid attribute name "a=b"/,
     'an attribute name with "=" is refused');
($rc, $out) = $t->nginx_t(conf_with('
            opamp_agent_attribute a x;
            opamp_agent_attribute a y;'));
like($out, qr/\[emerg\] \d+#\d+: duplicate attribute "a"/,
     'an attribute set twice is refused');
($rc, $out) = $t->nginx_t(conf_with(join '', map {
    "\n            opamp_agent_attribute a$_ x;" } 1 .. 17));
like($out, qr/\[emerg\] \d+#\d+: "opamp_agent_attribute" directive is repeated more than 16 times/,
     'at most 16 attributes');

$t->done;
done_testing;
