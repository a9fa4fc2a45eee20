#!/usr/bin/perl

# The plain HTTP transport: one AgentToServer per POST, one ServerToAgent
# back; what lands in Redis (docs/redis-schema.md); the spec's sequence,
# full-state, compression and identity rules; every bad input answered
# clearly while the same worker goes on serving other agents.

use strict;
use warnings;

use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use IO::Compress::Gzip qw(gzip);
use IO::Uncompress::Gunzip qw(gunzip);

use OpAMPTest;

my $t = OpAMPTest->new;
$t->start_redis;
$t->start_nginx('
        location = /gz { opamp; opamp_gzip_min_length 10; }',
    workers => 1, location => '
            opamp_heartbeat_interval 17s;
            opamp_max_message_size 4k;');

sub msg {
    my ($uid, $text) = @_;
    return $t->a2s('instance_uid: "' . uid_escape($uid) . '" ' . $text);
}

my $DESC = 'agent_description { identifying_attributes { key: '
           . '"service.name" value { string_value: "checkout" } } '
           . 'non_identifying_attributes { key: "os.type" value { '
           . 'string_value: "linux" } } }';

my $HEALTH = 'health { healthy: true status: "ok" start_time_unix_nano: 5 '
             . 'component_health_map { key: "pipeline:traces" value { '
             . 'healthy: false last_error: "exporter down" '
             . 'component_health_map { key: "exporter:otlp" value { '
             . 'healthy: false status: "refused" } } } } }';

# a good agent after each bad input: the worker still serves
sub still_serves {
    my ($after) = @_;
    my $uid = random_uid();
    my ($s, $h, $b) = $t->http_post(msg($uid, "sequence_num: 0 capabilities: 1 $DESC"));
    my $ok = $s == 200 && ($t->agent($uid)->{sequence_num} // '') eq '0';
    ok($ok, "after $after the worker still serves another agent");
}

my @workers = $t->worker_pids;

# --- the first message --------------------------------------------------

my $u1 = random_uid();
my ($s, $h, $body) = $t->http_post(
    msg($u1, "sequence_num: 0 capabilities: 0x801 $DESC $HEALTH"),
    'OpAMP-Instance-UID' => uid_text($u1));
is($s, 200, 'POST answered 200');
is($h->{'content-type'}, 'application/x-protobuf', 'protobuf reply');
my $r = $t->s2a_text($body);
like($r, qr/^instance_uid: "/m, 'instance_uid echoed');
ok(index($body, "\x0a\x10" . $u1) == 0, 'instance_uid bytes are the agent\'s');
like($r, qr/^capabilities: \d+$/m, 'server capabilities announced');
unlike($r, qr/^flags:/m, 'no ReportFullState for a new agent with '
       . 'its description');
unlike($r, qr/connection_settings/, 'no connection settings for an agent '
       . 'without AcceptsOpAMPConnectionSettings');

my $a = $t->agent($u1);
is($a->{schema}, 1, 'schema 1');
is($a->{instance_uid}, uid_text($u1), 'instance_uid in canonical text');
is($a->{sequence_num}, 0, 'sequence_num stored');
is($a->{capabilities}, 0x801, 'capabilities stored');
is($a->{transport}, 'http', 'transport http');
is($a->{healthy}, 1, 'healthy 1');
like($a->{first_seen_ms}, qr/^\d{13}$/, 'first_seen_ms');
is($a->{last_seen_ms}, $a->{first_seen_ms}, 'last_seen_ms');
is($a->{worker_pid}, $workers[0], 'worker_pid');
like($a->{channel}, qr/^opamp:worker:.+:$workers[0]$/, 'worker channel');
my $d = $t->decode('AgentDescription', $a->{description});
like($d, qr/key: "service.name"\s*value \{\s*string_value: "checkout"/,
     'description decodes back (protoc)');
like($d, qr/key: "os.type"/, 'with its non-identifying attributes');
my $hl = $t->decode('ComponentHealth', $a->{health});
like($hl, qr/key: "exporter:otlp"\s*value \{\s*status: "refused"/,
     'the whole health tree is stored');
like($hl, qr/last_error: "exporter down"/, 'nested components included');
ok(defined $t->redis('ZSCORE', 'opamp:agents', uid_text($u1)),
   'listed in the opamp:agents index');

# --- sequence numbers and full state --------------------------------------

($s, $h, $body) = $t->http_post(msg($u1, 'sequence_num: 1 capabilities: 0x801'));
unlike($t->s2a_text($body), qr/^flags:/m, 'seq + 1: no full state asked');
is($t->agent($u1)->{sequence_num}, 1, 'sequence_num advanced');
like($t->decode('AgentDescription', $t->agent($u1)->{description}),
     qr/checkout/, 'status compression: the omitted description is kept');

($s, $h, $body) = $t->http_post(msg($u1, 'sequence_num: 5 capabilities: 0x801'));
like($t->s2a_text($body), qr/^flags: 1$/m, 'a sequence gap asks for full state');

($s, $h, $body) = $t->http_post(msg($u1, 'sequence_num: 6 capabilities: 0x801 '
                                     . 'health { healthy: false }'));
unlike($t->s2a_text($body), qr/^flags:/m, 'continuing after the gap is fine');
is($t->agent($u1)->{healthy}, 0, 'a new health replaces the stored one');
unlike($t->decode('ComponentHealth', $t->agent($u1)->{health}),
       qr/exporter/, 'the whole tree is replaced');

($s, $h, $body) = $t->http_post(msg($u1, "sequence_num: 0 capabilities: 0x801 $DESC"));
unlike($t->s2a_text($body), qr/^flags:/m,
       'an agent that restarted (sequence 0 with its description) is not '
       . 'asked again');

my $u2 = random_uid();
($s, $h, $body) = $t->http_post(msg($u2, 'sequence_num: 3 capabilities: 1'));
like($t->s2a_text($body), qr/^flags: 1$/m,
     'an unknown agent without a description is asked for full state');

$t->redis('HDEL', 'opamp:agent:{' . uid_text($u1) . '}', 'description');
($s, $h, $body) = $t->http_post(msg($u1, 'sequence_num: 1 capabilities: 0x801'));
like($t->s2a_text($body), qr/^flags: 1$/m,
     'stored state missing: full state asked');

# --- identity ---------------------------------------------------------------

my $u3 = random_uid();
($s, $h, $body) = $t->http_post(msg($u3, "sequence_num: 0 capabilities: 1 flags: 1 $DESC"));
my ($new) = $t->s2a_text($body) =~ /agent_identification \{\s*new_instance_uid: "((?:[^"\\]|\\.)*)"/;
ok(defined $new, 'RequestInstanceUid answered with agent_identification');
my $pos = index($body, "\x42\x12\x0a\x10");
ok($pos >= 0, 'new_instance_uid is 16 bytes');
my $nu = substr($body, $pos + 4, 16);
is(ord(substr($nu, 6, 1)) >> 4, 7, 'a UUIDv7 (version 7)');
is(ord(substr($nu, 8, 1)) >> 6, 2, 'RFC 9562 variant');
my $ms = unpack('Q>', "\0\0" . substr($nu, 0, 6));
ok(abs($ms - time * 1000) < 60000, 'its timestamp is now');
is($t->agent($nu)->{sequence_num}, '0',
   'the report is stored under the new uid');
ok(!$t->redis('EXISTS', 'opamp:agent:{' . uid_text($u3) . '}'),
   'and not under the old one');

# --- agent_disconnect -------------------------------------------------------

($s, $h, $body) = $t->http_post(msg($u1, 'sequence_num: 2 capabilities: 0x801 '
                                     . 'agent_disconnect {}'));
is($s, 200, 'agent_disconnect answered');
is($t->agent($u1)->{connected}, 0, 'agent_disconnect: connected 0');
like($t->agent($u1)->{disconnected_at_ms}, qr/^\d{13}$/,
     'disconnected_at_ms');

# --- OpAMP connection settings: heartbeat, once -----------------------------

my $u4 = random_uid();
($s, $h, $body) = $t->http_post(msg($u4, "sequence_num: 0 capabilities: 0x101 $DESC"));
$r = $t->s2a_text($body);
like($r, qr/connection_settings \{\s*hash: ".+"\s*opamp \{\s*heartbeat_interval_seconds: 17\s*\}/s,
     'AcceptsOpAMPConnectionSettings: heartbeat 17s offered, with a hash');
($s, $h, $body) = $t->http_post(msg($u4, 'sequence_num: 1 capabilities: 0x101'));
unlike($t->s2a_text($body), qr/connection_settings/, 'offered once only');
like($t->agent($u4)->{cs_hash}, qr/^[0-9a-f]{40}$/, 'cs_hash recorded');

# --- compression --------------------------------------------------------------

my $u5 = random_uid();
my $plain = msg($u5, "sequence_num: 0 capabilities: 1 $DESC");
my $gz;
gzip(\$plain => \$gz);
($s, $h, $body) = $t->http_post($gz, 'Content-Encoding' => 'gzip');
is($s, 200, 'a gzip request body is accepted');
like($t->decode('AgentDescription', $t->agent($u5)->{description} // ''),
     qr/checkout/, 'and stored');

($s, $h, $body) = $t->http_post(msg($u5, 'sequence_num: 1 capabilities: 1'),
                                'Accept-Encoding' => 'gzip, deflate');
is($h->{'content-encoding'}, undef,
   'a reply under opamp_gzip_min_length (256) is not gzipped');
like($h->{vary} // '', qr/Accept-Encoding/, 'Vary: Accept-Encoding');

($s, $h, $body) = $t->http_post(msg($u5, 'sequence_num: 2 capabilities: 1'),
                                'Accept-Encoding' => 'gzip', -path => '/gz');
is($h->{'content-encoding'}, 'gzip',
   'a reply over opamp_gzip_min_length is gzipped for an agent that '
   . 'accepts it');
my $reply = '';
gunzip(\$body => \$reply);
ok(index($reply, "\x0a\x10" . $u5) == 0, 'and gunzips to the ServerToAgent');

($s, $h, $body) = $t->http_post(msg($u5, 'sequence_num: 3 capabilities: 1'),
                                -path => '/gz');
is($h->{'content-encoding'}, undef, 'not gzipped without Accept-Encoding');

# --- bad input --------------------------------------------------------------

($s, $h, $body) = $t->http_post(msg($u1, 'sequence_num: 3 capabilities: 1'),
                                'OpAMP-Instance-UID' => uid_text($u2));
is($s, 400, 'OpAMP-Instance-UID that differs from instance_uid: 400');
like($t->s2a_text($body), qr/ServerErrorResponseType_BadRequest/,
     'with a ServerErrorResponse BAD_REQUEST');
still_serves('a mismatched OpAMP-Instance-UID');

($s, $h, $body) = $t->http_post(msg($u1, 'sequence_num: 3 capabilities: 1'),
                                'OpAMP-Instance-UID' => 'not-a-uuid');
is($s, 400, 'malformed OpAMP-Instance-UID: 400');
like($body, qr/OpAMP-Instance-UID/, 'with the reason');

($s, $h, $body) = $t->http_post('', -method => 'PUT');
is($s, 405, 'PUT: 405');
like($h->{allow} // '', qr/GET.*POST|POST.*GET/, 'with Allow: GET, POST');
still_serves('a PUT');

($s, $h, $body) = $t->http_post('', -method => 'GET');
is($s, 400, 'GET without a WebSocket upgrade: 400');

($s, $h, $body) = $t->http_post(msg($u1, 'sequence_num: 3'),
                                'Content-Type' => 'application/json');
is($s, 415, 'wrong Content-Type: 415');
like($body, qr/application\/x-protobuf/, 'naming the expected type');
still_serves('a wrong Content-Type');

($s, $h, $body) = $t->http_post(msg($u1, 'sequence_num: 3'),
                                'Content-Encoding' => 'br');
is($s, 415, 'unknown Content-Encoding: 415');

($s, $h, $body) = $t->http_post("\xff\xff\xff\xff garbage");
is($s, 400, 'garbage protobuf: 400');
like($t->s2a_text($body), qr/type: ServerErrorResponseType_BadRequest\s*error_message: "[^"]+"/,
     'with ServerErrorResponse BAD_REQUEST and a reason');
still_serves('garbage protobuf');

my $full = msg($u1, "sequence_num: 3 capabilities: 1 $DESC");
($s, $h, $body) = $t->http_post(substr($full, 0, length($full) - 7));
is($s, 400, 'truncated protobuf: 400');
like($t->s2a_text($body), qr/ServerErrorResponseType_BadRequest/,
     'BAD_REQUEST');
still_serves('a truncated protobuf');

($s, $h, $body) = $t->http_post($t->a2s('instance_uid: "0123456789abcde" sequence_num: 0'));
is($s, 400, 'instance_uid of 15 bytes: 400');
like($t->s2a_text($body), qr/instance_uid must be 16 bytes/, 'says why');
still_serves('a short instance_uid');

($s, $h, $body) = $t->http_post(msg($u1, 'sequence_num: 3 capabilities: 1 '
    . 'agent_description { identifying_attributes { key: "k" value { '
    . 'string_value: "' . ('x' x 5000) . '" } } }'));
is($s, 413, 'a body over opamp_max_message_size: 413');
still_serves('an oversized body');

my $bomb_plain = msg($u1, 'sequence_num: 3 capabilities: 1 '
    . 'agent_description { identifying_attributes { key: "k" value { '
    . 'string_value: "' . ('x' x 200000) . '" } } }');
my $bomb;
gzip(\$bomb_plain => \$bomb);
ok(length $bomb < 4096, 'the gzip bomb itself is small (' . length($bomb)
   . ' bytes)');
($s, $h, $body) = $t->http_post($bomb, 'Content-Encoding' => 'gzip');
is($s, 413, 'a gzip bomb (over the limit once inflated): 413');
like($body, qr/gunzipped/, 'says the inflated size is the problem');
still_serves('a gzip bomb');

($s, $h, $body) = $t->http_post("\x1f\x8b\x08\x00corrupt", 'Content-Encoding' => 'gzip');
is($s, 400, 'corrupt gzip: 400');
like($body, qr/gzip/, 'says so');
still_serves('corrupt gzip');

is_deeply([ $t->worker_pids ], \@workers, 'the same worker all along');

# --- a second fleet on the same Redis ---------------------------------------

my $t2 = OpAMPTest->new(redis_port => $t->redis_port);
$t2->start_nginx('', prefix => 'fleet2:');
my $u6 = random_uid();
($s, $h, $body) = $t2->http_post(msg($u6, "sequence_num: 0 capabilities: 1 $DESC"));
is($s, 200, 'a second prefix: served');
ok($t->redis('EXISTS', 'fleet2:agent:{' . uid_text($u6) . '}'),
   'its keys live under fleet2:');
ok(!$t->redis('EXISTS', 'opamp:agent:{' . uid_text($u6) . '}'),
   'and not under opamp:');
$t2->done;

$t->done;
done_testing;
