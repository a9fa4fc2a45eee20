#!/usr/bin/perl

# The plain HTTP transport: one AgentToServer per POST, one ServerToAgent
# back.  Every case is checked on the wire (the reply decoded by protoc)
# and in Redis (docs/redis-schema.md): first contact, sequence numbers and
# ReportFullState, status compression, the health tree, RequestInstanceUid,
# agent_disconnect, the connection settings offer, gzip both ways; then
# every kind of bad input, each answered clearly while the same worker goes
# on serving other agents; then a second fleet under another prefix.

use strict;
use warnings;

use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use IO::Compress::Gzip qw(gzip $GzipError);
use IO::Uncompress::Gunzip qw(gunzip $GunzipError);
use Time::HiRes qw(time);
use IO::Socket::INET;
use IO::Select;

use OpAMPTest;

# the server's capabilities, as src/ngx_http_opamp_session.c announces
# them: AcceptsStatus | OffersRemoteConfig | AcceptsEffectiveConfig |
# OffersPackages | AcceptsPackagesStatus | OffersConnectionSettings
my $SERVER_CAPS = 0x01 | 0x02 | 0x04 | 0x08 | 0x10 | 0x20;
my $MAX = 4096;

# many long custom capability names: a reply over opamp_gzip_min_length
my @CCAPS = map { "io.example.capability.number.$_.with.a.long.name" } 1 .. 12;

my $t = OpAMPTest->new;
$t->start_redis;
my $LOCS = "
        location = /big { opamp; opamp_custom_capabilities @CCAPS; }
        location = /gz20 { opamp; opamp_gzip_min_length 20; }
        location = /gz21 { opamp; opamp_gzip_min_length 21; }
        location = /cmbs { opamp; client_max_body_size 1k;
                           opamp_max_message_size 8k; }";
$t->start_nginx($LOCS,
    workers => 1, location => "
            opamp_heartbeat_interval 17s;
            opamp_max_message_size $MAX;");

my @workers = $t->worker_pids;
is(scalar @workers, 1, 'one worker');

sub msg {
    my ($uid, $text) = @_;
    return $t->a2s('instance_uid: "' . uid_escape($uid) . '" ' . $text);
}

sub post {
    my ($bytes, %h) = @_;
    my ($s, $h, $b) = $t->http_post($bytes, %h);
    my $m = eval { $t->s2a($b) };
    return ($s, $h, $b, $m);
}

sub now_ms { int(time * 1000) }

my $DESC_TEXT = 'identifying_attributes { key: "service.name" value { '
    . 'string_value: "checkout" } } identifying_attributes { key: '
    . '"service.instance.id" value { string_value: "i-1" } } '
    . 'non_identifying_attributes { key: "os.type" value { string_value: '
    . '"linux" } } non_identifying_attributes { key: "host.cpus" value { '
    . 'int_value: 8 } }';
my $DESC = "agent_description { $DESC_TEXT }";

my $HEALTH_TEXT = 'healthy: true status: "ok" start_time_unix_nano: 5 '
    . 'component_health_map { key: "pipeline:traces" value { healthy: false '
    . 'last_error: "exporter down" component_health_map { key: '
    . '"exporter:otlp" value { healthy: false status: "refused" '
    . 'last_error: "connection refused" } } } } '
    . 'component_health_map { key: "pipeline:logs" value { healthy: true } }';
my $HEALTH = "health { $HEALTH_TEXT }";

# a good agent after each bad input: the same worker still serves, and
# what it reports lands in Redis
my $good_n = 0;
sub still_serves {
    my ($after) = @_;
    my $uid = random_uid();
    my $n = ++$good_n;
    my ($s, $h, $b, $m) = post(msg($uid, "sequence_num: $n capabilities: 1 "
                                         . $DESC));
    my $a = $t->agent($uid);
    my $ok = ($s // 0) == 200
             && $m && ($m->{instance_uid} // '') eq $uid
             && !$m->{error_response}
             && ($a->{sequence_num} // '') eq $n
             && ($a->{worker_pid} // '') eq $workers[0];
    ok($ok, "after $after, another agent is served (200) and stored")
        or diag("status " . ($s // 'none') . ", reply "
                . eval { $t->s2a_text($b) } . ", hash "
                . join(' ', map { "$_=" . ($a->{$_} // '') }
                            qw(sequence_num worker_pid)));
}

# --- the first message --------------------------------------------------

my $u1 = random_uid();
my $before = now_ms();
my ($s, $h, $body, $m) = post(
    msg($u1, "sequence_num: 0 capabilities: 0x801 $DESC $HEALTH"),
    'OpAMP-Instance-UID' => uid_text($u1));
my $after = now_ms();
is($s, 200, 'first message: 200');
is($h->{'content-type'}, 'application/x-protobuf',
   'Content-Type application/x-protobuf');
is($h->{'content-length'}, length $body, 'Content-Length is the body');
ok($m, 'the reply is a ServerToAgent') or diag($body);
is($m->{instance_uid}, $u1, 'instance_uid echoed');
is($m->{capabilities}, $SERVER_CAPS,
   'server capabilities: AcceptsStatus, OffersRemoteConfig, '
   . 'AcceptsEffectiveConfig, OffersPackages, AcceptsPackagesStatus, '
   . 'OffersConnectionSettings');
ok(!(($m->{flags} // 0) & 1),
   'no ReportFullState for a new agent that sent its description');
ok(!$m->{error_response}, 'no error_response');
ok(!$m->{connection_settings},
   'no connection settings for an agent without '
   . 'AcceptsOpAMPConnectionSettings');
ok(!$m->{agent_identification}, 'no agent_identification');

my $a = $t->agent($u1);
is($a->{schema}, 3, 'hash: schema 3');
ok(!exists $a->{instance_uid}, 'hash: no instance_uid (the key names it)');
is($t->redis('TYPE', $t->status_key($u1)), 'string',
   'status fields: one string of their own');
is($a->{sequence_num}, 0, 'hash: sequence_num');
is($a->{capabilities}, 0x801, 'hash: capabilities');
is($a->{transport}, 'http', 'hash: transport http');
is($a->{healthy}, 1, 'hash: healthy 1');
is($a->{connected}, 1, 'hash: connected 1');
is($a->{worker_pid}, $workers[0], 'hash: worker_pid');
ok(($a->{first_seen_ms} // 0) >= $before - 20
   && ($a->{first_seen_ms} // 0) <= $after + 20,
   'hash: first_seen_ms is the time of the message')
    or diag("$before <= $a->{first_seen_ms} <= $after");
is($a->{last_seen_ms}, $a->{first_seen_ms}, 'hash: last_seen_ms');
is($a->{expires_ms}, $a->{last_seen_ms} + 90000,
   'hash: expires_ms = last_seen_ms + opamp_agent_timeout (90s)');
is($t->decode('AgentDescription', $a->{description} // ''),
   $t->decode('AgentDescription', $t->encode('AgentDescription', $DESC_TEXT)),
   'hash: the stored description decodes back to what was sent');
is($t->decode('ComponentHealth', $a->{health} // ''),
   $t->decode('ComponentHealth', $t->encode('ComponentHealth', $HEALTH_TEXT)),
   'hash: the whole health tree is stored');
my $hl = $t->parse('ComponentHealth', $a->{health} // '');
is($hl->{component_health_map}{'pipeline:traces'}{component_health_map}
       {'exporter:otlp'}{last_error}, 'connection refused',
   'hash: health, two levels down');
is($t->redis('ZSCORE', 'opamp:agents', uid_text($u1)), $a->{last_seen_ms},
   'zset opamp:agents: the uid, scored by last_seen_ms');

# --- sequence numbers and ReportFullState --------------------------------

($s, $h, $body, $m) = post(msg($u1, 'sequence_num: 1 capabilities: 0x801'));
is($s, 200, 'seq + 1: 200');
ok(!(($m->{flags} // 0) & 1), 'seq + 1: no ReportFullState');
$a = $t->agent($u1);
is($a->{sequence_num}, 1, 'seq + 1: sequence_num stored');
is($t->decode('AgentDescription', $a->{description} // ''),
   $t->decode('AgentDescription', $t->encode('AgentDescription', $DESC_TEXT)),
   'status compression: an omitted description keeps the stored one');
is($t->decode('ComponentHealth', $a->{health} // ''),
   $t->decode('ComponentHealth', $t->encode('ComponentHealth', $HEALTH_TEXT)),
   'status compression: an omitted health keeps the stored one');
is($a->{healthy}, 1, 'status compression: healthy kept');

# (that heartbeat may take the short way, which writes no status at all;
# a message with one status field takes the long way, which must keep
# every field the message omits)
($s, $h, $body, $m) = post(msg($u1, 'sequence_num: 2 capabilities: 0x801 '
                                    . 'health { healthy: false }'));
$a = $t->agent($u1);
is($a->{healthy}, 0, 'a message with only health: health stored');
is($t->decode('AgentDescription', $a->{description} // ''),
   $t->decode('AgentDescription', $t->encode('AgentDescription', $DESC_TEXT)),
   'status compression on the long way: the omitted description is kept');

($s, $h, $body, $m) = post(msg($u1, 'sequence_num: 5 capabilities: 0x801'));
is($s, 200, 'sequence gap: 200');
is(($m->{flags} // 0) & 1, 1, 'sequence gap: ReportFullState');
is($t->agent($u1)->{sequence_num}, 5, 'sequence gap: sequence_num stored');

($s, $h, $body, $m) = post(msg($u1, 'sequence_num: 6 capabilities: 0x801 '
                                    . 'health { healthy: false status: '
                                    . '"degraded" }'));
ok(!(($m->{flags} // 0) & 1), 'seq + 1 after the gap: no ReportFullState');
$a = $t->agent($u1);
is($a->{healthy}, 0, 'a new health replaces the stored one: healthy 0');
is_deeply($t->parse('ComponentHealth', $a->{health} // ''),
          { status => 'degraded' },
          'the whole stored tree is replaced, no component left over');

($s, $h, $body, $m) = post(msg($u1, 'sequence_num: 6 capabilities: 0x801'));
is(($m->{flags} // 0) & 1, 1,
   'the same sequence_num again (not seq + 1): ReportFullState');

my $u2 = random_uid();
($s, $h, $body, $m) = post(msg($u2, 'sequence_num: 3 capabilities: 1'));
is($s, 200, 'unknown agent without description: 200');
is($m->{flags}, 1, 'unknown agent without description: ReportFullState');
is($m->{instance_uid}, $u2, 'and its instance_uid echoed');

($s, $h, $body, $m) = post(msg($u2, "sequence_num: 4 capabilities: 1 $DESC"));
ok(!(($m->{flags} // 0) & 1), 'it reports its full state: no flag');

($s, $h, $body, $m) = post(msg($u2, "sequence_num: 0 capabilities: 1 $DESC"));
ok(!(($m->{flags} // 0) & 1),
   'agent restarted (sequence 0 with its description): no flag');

# 64-bit sequence numbers, past what a double holds exactly
my $u64 = random_uid();
($s, $h, $body, $m) = post(msg($u64, 'sequence_num: 18446744073709551613 '
                                     . "capabilities: 1 $DESC"));
is($s, 200, 'sequence_num near 2^64: 200');
is($t->agent($u64)->{sequence_num}, '18446744073709551613',
   'sequence_num near 2^64: stored exactly');
($s, $h, $body, $m) = post(msg($u64, 'sequence_num: 18446744073709551614 '
                                     . 'capabilities: 1'));
ok(!(($m->{flags} // 0) & 1), 'sequence_num near 2^64, + 1: no flag');
($s, $h, $body, $m) = post(msg($u64, 'sequence_num: 18446744073709551612 '
                                     . 'capabilities: 1'));
is(($m->{flags} // 0) & 1, 1,
   'sequence_num near 2^64, going back by 2: ReportFullState');

# a field this server does not know (a newer agent): accepted
my $uu = random_uid();
($s, $h, $body, $m) = post(msg($uu, "sequence_num: 0 capabilities: 1 $DESC")
                           . "\xf8\x06\x2a");    # field 111, varint 42
is($s, 200, 'an unknown field in AgentToServer: 200');
ok(!$m->{error_response}, 'an unknown field: no error');
is($t->agent($uu)->{sequence_num}, 0, 'an unknown field: stored');

# --- RequestInstanceUid -------------------------------------------------

my $u3 = random_uid();
($s, $h, $body, $m) = post(msg($u3, "sequence_num: 0 capabilities: 1 "
                                    . "flags: 1 $DESC"));
is($s, 200, 'RequestInstanceUid: 200');
my $nu = $m->{agent_identification}{new_instance_uid} // '';
is(length $nu, 16, 'agent_identification.new_instance_uid is 16 bytes');
isnt($nu, $u3, 'a uid other than the old one');
is(ord(substr($nu, 6, 1)) >> 4, 7, 'UUIDv7: version nibble 7');
is(ord(substr($nu, 8, 1)) >> 6, 2, 'UUIDv7: variant bits 10');
my $ms = unpack('Q>', "\0\0" . substr($nu, 0, 6));
ok(abs($ms - now_ms()) < 60000, 'UUIDv7: its timestamp is now');
is($t->agent($nu)->{sequence_num}, '0',
   'the report is stored under the new uid');
is($t->redis('EXISTS', $t->agent_key($u3)), 0, 'and not under the old one');

my $u3b = random_uid();
($s, $h, $body, $m) = post(msg($u3b, "sequence_num: 0 capabilities: 1 "
                                     . "flags: 1 $DESC"));
my $nu2 = $m->{agent_identification}{new_instance_uid} // '';
ok(length $nu2 == 16 && $nu2 ne $nu, 'each request gets a different uid');

# --- agent_disconnect ---------------------------------------------------

($s, $h, $body, $m) = post(msg($u1, 'sequence_num: 7 capabilities: 0x801 '
                                    . 'agent_disconnect {}'));
is($s, 200, 'agent_disconnect: 200');
$a = $t->agent($u1);
is($a->{connected}, 0, 'agent_disconnect: connected 0');
ok(($a->{disconnected_at_ms} // 0) >= $a->{first_seen_ms},
   'agent_disconnect: disconnected_at_ms');

($s, $h, $body, $m) = post(msg($u1, 'sequence_num: 8 capabilities: 0x801'));
is($t->agent($u1)->{connected}, 1, 'polling again: connected 1');

# --- connection settings offer --------------------------------------------

# (ReportsHeartbeat: an agent that accepts OpAMP settings is told the
# interval only with an operator's endpoint, t/65-offers.t)
my $u4 = random_uid();
($s, $h, $body, $m) = post(msg($u4, "sequence_num: 0 capabilities: 0x2001 "
                                    . $DESC));
is($m->{connection_settings}{opamp}{heartbeat_interval_seconds}, 17,
   'ReportsHeartbeat: heartbeat_interval_seconds 17 offered');
ok(length($m->{connection_settings}{hash} // '') > 0, 'with a hash');
is($t->agent($u4)->{cs_hash}, unpack('H*', $m->{connection_settings}{hash}
                                            // ''),
   'cs_hash in Redis is the offered hash');
($s, $h, $body, $m) = post(msg($u4, 'sequence_num: 1 capabilities: 0x2001'));
ok(!$m->{connection_settings}, 'not offered again on the next message');
($s, $h, $body, $m) = post(msg($u4, 'sequence_num: 2 capabilities: 0x2001'));
ok(!$m->{connection_settings}, 'nor on the one after');

my $u4b = random_uid();
($s, $h, $body, $m) = post(msg($u4b, "sequence_num: 0 capabilities: 0x1 "
                                     . $DESC));
ok(!$m->{connection_settings}, 'no offer without the capability (1st)');
($s, $h, $body, $m) = post(msg($u4b, 'sequence_num: 1 capabilities: 0x1'));
ok(!$m->{connection_settings}, 'no offer without the capability (2nd)');

# --- Content-Type variants ------------------------------------------------

my $u5 = random_uid();
($s, $h, $body, $m) = post(msg($u5, "sequence_num: 0 capabilities: 1 $DESC"),
    'Content-Type' => 'application/x-protobuf; charset=binary');
is($s, 200, 'Content-Type with a parameter: 200');

# --- gzip -----------------------------------------------------------------

my $plain = msg($u5, "sequence_num: 1 capabilities: 1 $HEALTH");
my $gz;
gzip(\$plain => \$gz) or die $GzipError;
($s, $h, $body, $m) = post($gz, 'Content-Encoding' => 'gzip');
is($s, 200, 'gzip request body: 200');
is($m->{instance_uid}, $u5, 'gzip request body: understood');
is($t->decode('ComponentHealth', $t->agent($u5)->{health} // ''),
   $t->decode('ComponentHealth', $t->encode('ComponentHealth', $HEALTH_TEXT)),
   'gzip request body: stored');

($s, $h, $body, $m) = post(msg($u5, 'sequence_num: 2 capabilities: 1'),
                           'Accept-Encoding' => 'gzip, deflate');
is($s, 200, 'small reply with Accept-Encoding: gzip: 200');
ok(!$h->{'content-encoding'},
   'a reply under opamp_gzip_min_length (256) is not gzipped');
ok(length $body < 256, '(it is ' . length($body) . ' bytes)');
like($h->{vary} // '', qr/Accept-Encoding/i, 'Vary: Accept-Encoding');

($s, $h, $body) = $t->http_post(msg($u5, 'sequence_num: 3 capabilities: 1'),
                                'Accept-Encoding' => 'gzip', -path => '/big');
is($s, 200, 'large reply: 200');
is($h->{'content-encoding'}, 'gzip',
   'a reply over opamp_gzip_min_length is gzipped for Accept-Encoding: gzip');
is($h->{'content-length'}, length $body, 'Content-Length of the gzip body');
my $reply = '';
ok(gunzip(\$body => \$reply), 'it gunzips') or diag $GunzipError;
ok(length $reply >= 256, 'to more than 256 bytes (' . length($reply) . ')');
$m = eval { $t->s2a($reply) } // {};
is($m->{instance_uid}, $u5, 'to a ServerToAgent for the agent');
is_deeply($m->{custom_capabilities}{capabilities}, \@CCAPS,
          'with the server\'s custom capabilities');

($s, $h, $body, $m) = post(msg($u5, 'sequence_num: 4 capabilities: 1'),
                           -path => '/big');
ok(!$h->{'content-encoding'}, 'large reply, no Accept-Encoding: not gzipped');
is($m->{instance_uid}, $u5, 'and plain protobuf');

($s, $h, $body, $m) = post(msg($u5, 'sequence_num: 5 capabilities: 1'),
                           'Accept-Encoding' => 'gzip;q=0', -path => '/big');
ok(!$h->{'content-encoding'}, 'Accept-Encoding: gzip;q=0: not gzipped');
is($m->{instance_uid}, $u5, 'and plain protobuf');

# the threshold is "at least": a reply of 20 bytes (instance_uid and
# capabilities) is gzipped at 20, not at 21
($s, $h, $body, $m) = post(msg($u5, 'sequence_num: 6 capabilities: 1'));
is(length $body, 20, '(a plain reply to a known agent is 20 bytes)');
($s, $h, $body) = $t->http_post(msg($u5, 'sequence_num: 7 capabilities: 1'),
                                'Accept-Encoding' => 'gzip', -path => '/gz20');
is($h->{'content-encoding'}, 'gzip',
   'a 20-byte reply, opamp_gzip_min_length 20: gzipped');
$reply = '';
gunzip(\$body => \$reply);
is(length $reply, 20, 'and it gunzips to the 20 bytes');
($s, $h, $body, $m) = post(msg($u5, 'sequence_num: 8 capabilities: 1'),
                           'Accept-Encoding' => 'gzip', -path => '/gz21');
ok(!$h->{'content-encoding'},
   'a 20-byte reply, opamp_gzip_min_length 21: not gzipped');
is($m->{instance_uid}, $u5, 'and plain');

# Accept-Encoding: "gzip" refused with q=0 however it is written (RFC 9110:
# optional whitespace around ";", the weight up to three decimals)
for my $ae ('gzip; q=0', 'gzip ;q=0', 'gzip;q=0.000', 'gzip;Q=0') {
    ($s, $h, $body, $m) = post(msg($u5, 'sequence_num: 8 capabilities: 1'),
                               'Accept-Encoding' => $ae, -path => '/big');
    ok(!$h->{'content-encoding'}, "Accept-Encoding: $ae: not gzipped")
        or diag("Content-Encoding: $h->{'content-encoding'}");
}
for my $ae ('gzip;q=0.001', 'gzip; q=0.5', 'deflate, gzip;q=1.0', 'GZIP') {
    ($s, $h, $body) = $t->http_post(msg($u5, 'sequence_num: 8 capabilities: 1'),
                                    'Accept-Encoding' => $ae, -path => '/big');
    is($h->{'content-encoding'}, 'gzip', "Accept-Encoding: $ae: gzipped");
}

# --- bad input, each followed by a good agent on the same worker -----------

still_serves('the good requests above');

# OpAMP-Instance-UID header that differs from the body
($s, $h, $body, $m) = post(msg($u5, 'sequence_num: 9 capabilities: 1'),
                           'OpAMP-Instance-UID' => uid_text($u2));
is($s, 400, 'OpAMP-Instance-UID differs from instance_uid: 400');
is($m->{error_response}{type}, 'ServerErrorResponseType_BadRequest',
   'with ServerErrorResponse BAD_REQUEST');
is($t->agent($u5)->{sequence_num}, 8, 'nothing stored for it');
still_serves('a mismatched OpAMP-Instance-UID');

($s, $h, $body) = $t->http_post(msg($u5, 'sequence_num: 9 capabilities: 1'),
                                'OpAMP-Instance-UID' => 'not-a-uuid');
is($s, 400, 'malformed OpAMP-Instance-UID: 400');
like($body, qr/OpAMP-Instance-UID/, 'with the reason');
still_serves('a malformed OpAMP-Instance-UID');

($s, $h, $body) = $t->http_post(msg($u5, 'sequence_num: 9 capabilities: 1'),
                                'OpAMP-Instance-UID' => uid_text($u5));
is($s, 200, 'a matching OpAMP-Instance-UID: 200');

my $uh = random_uid();
($s, $h, $body, $m) = post(msg($uh, "sequence_num: 0 capabilities: 1 $DESC"),
                           'OpAMP-Instance-UID' => uc uid_text($uh));
is($s, 200, 'OpAMP-Instance-UID in uppercase: 200');
is($m->{instance_uid}, $uh, 'uppercase header: answered');

($s, $h, $body) = $t->http_post(msg($uh, 'sequence_num: 1 capabilities: 1'),
    'OpAMP-Instance-UID' => substr(uid_text($uh), 0, 35) . 'g');
is($s, 400, 'OpAMP-Instance-UID with a non-hex digit: 400');

my $uhx = random_uid();
($s, $h, $body, $m) = post(msg($uhx, "sequence_num: 0 capabilities: 1 $DESC"),
                           'OpAMP-Instance-UID' => uid_hex($uhx));
is($s, 200, 'OpAMP-Instance-UID as 32 hex digits: 200');

($s, $h, $body, $m) = post(msg($uhx, 'sequence_num: 1 capabilities: 1'),
                           'Content-Type' => 'Application/X-Protobuf');
is($s, 200, 'Content-Type in another case: 200');

($s, $h, $body) = $t->http_post('', -method => 'HEAD',
                                'Content-Type' => undef);
is($s, 405, 'HEAD: 405');

# GET without an upgrade: a failed WebSocket handshake
($s, $h, $body) = $t->http_post('', -method => 'GET', 'Content-Type' => undef);
is($s, 400, 'GET without a WebSocket upgrade: 400');
still_serves('a GET without upgrade');

($s, $h, $body) = $t->http_post(msg($u5, 'sequence_num: 10'), -method => 'PUT');
is($s, 405, 'PUT: 405');
like($h->{allow} // '', qr/^GET,\s*POST$/, 'with Allow: GET, POST');
still_serves('a PUT');

($s, $h, $body) = $t->http_post('', -method => 'DELETE',
                                'Content-Type' => undef);
is($s, 405, 'DELETE: 405');

($s, $h, $body) = $t->http_post(msg($u5, 'sequence_num: 10'),
                                'Content-Type' => 'application/json');
is($s, 415, 'Content-Type application/json: 415');
like($body, qr{application/x-protobuf}, 'naming the expected type');
still_serves('a wrong Content-Type');

($s, $h, $body) = $t->http_post(msg($u5, 'sequence_num: 10'),
                                'Content-Type' => undef);
is($s, 415, 'no Content-Type: 415');

($s, $h, $body) = $t->http_post(msg($u5, 'sequence_num: 10'),
                                'Content-Type' => 'application/x-protobufs');
is($s, 415, 'Content-Type application/x-protobufs: 415');

($s, $h, $body) = $t->http_post(msg($u5, 'sequence_num: 10'),
                                'Content-Encoding' => 'br');
is($s, 415, 'Content-Encoding br: 415');
still_serves('an unknown Content-Encoding');
is($t->agent($u5)->{sequence_num}, 9, 'none of them was stored');

my $garbage = "\xff\xff\xff\xff\xff garbage \x00\x01";
ok(!eval { $t->decode('AgentToServer', $garbage); 1 },
   '(protoc agrees the garbage is not an AgentToServer)');
($s, $h, $body, $m) = post($garbage);
is($s, 400, 'garbage protobuf: 400');
is($h->{'content-type'}, 'application/x-protobuf', 'with a protobuf body');
is($m->{error_response}{type}, 'ServerErrorResponseType_BadRequest',
   'garbage: ServerErrorResponse BAD_REQUEST');
ok(length($m->{error_response}{error_message} // '') > 0,
   'garbage: with an error_message');
still_serves('garbage protobuf');

my $full = msg(random_uid(), "sequence_num: 3 $DESC");
my $trunc = substr($full, 0, length($full) - 7);
ok(!eval { $t->decode('AgentToServer', $trunc); 1 },
   '(protoc agrees the truncated message is invalid)');
($s, $h, $body, $m) = post($trunc);
is($s, 400, 'truncated protobuf: 400');
is($m->{error_response}{type}, 'ServerErrorResponseType_BadRequest',
   'truncated: BAD_REQUEST');
ok(length($m->{error_response}{error_message} // '') > 0,
   'truncated: with an error_message');
still_serves('a truncated protobuf');

my $short = substr(random_uid(), 0, 15);
($s, $h, $body, $m) = post($t->a2s('instance_uid: "' . uid_escape($short)
                                   . "\" sequence_num: 0 $DESC"));
is($s, 400, 'instance_uid of 15 bytes: 400');
is($m->{error_response}{type}, 'ServerErrorResponseType_BadRequest',
   '15 bytes: BAD_REQUEST');
like($m->{error_response}{error_message} // '', qr/16 bytes/,
     '15 bytes: says instance_uid must be 16 bytes');
still_serves('a 15-byte instance_uid');

# an effective_config (stored as received, never decoded in the worker)
# holding a field whose tag takes 6 bytes: valid varint, but protobuf-c
# reads at most 5 bytes of a tag, so the admin API could never decode what
# would be stored (found by t/fuzz/fuzz_a2s.c)
my $utag = random_uid();
my $tag6 = msg($utag, 'sequence_num: 0 capabilities: 1')
           . "\x32\x07\x90\x80\x80\x80\x80\x00\x01";
($s, $h, $body, $m) = post($tag6);
is($s, 400, 'a field tag of 6 bytes in effective_config: 400');
like($m->{error_response}{error_message} // '', qr/overlong field tag/,
     '6-byte tag: says why');
ok(!$t->agent($utag)->{effective_config}, '6-byte tag: nothing stored');
still_serves('a 6-byte field tag');

($s, $h, $body, $m) = post($t->a2s("sequence_num: 0 $DESC"));
is($s, 400, 'no instance_uid: 400');
is($m->{error_response}{type}, 'ServerErrorResponseType_BadRequest',
   'no instance_uid: BAD_REQUEST');

my $big = msg(random_uid(), 'sequence_num: 0 capabilities: 1 '
    . 'agent_description { identifying_attributes { key: "k" value { '
    . 'string_value: "' . ('x' x ($MAX + 100)) . '" } } }');
ok(length $big > $MAX, '(the large message is ' . length($big) . ' bytes)');
($s, $h, $body) = $t->http_post($big);
is($s, 413, 'a body over opamp_max_message_size (4k): 413');
still_serves('an oversized body');

my $fits = msg(random_uid(), 'sequence_num: 0 capabilities: 1 '
    . 'agent_description { identifying_attributes { key: "k" value { '
    . 'string_value: "' . ('x' x ($MAX - 200)) . '" } } }');
ok(length $fits <= $MAX, '(the message that fits is ' . length($fits)
   . ' bytes)');
($s, $h, $body) = $t->http_post($fits);
is($s, 200, 'a body just under opamp_max_message_size: 200');

# an AgentToServer of exactly $len bytes
sub sized {
    my ($uid, $len) = @_;
    my $n = $len - 100;
    for (1 .. 5) {
        # the bulk in the health: a description is bounded on its own
        # (65,536 bytes, t/79-redis-time.t)
        my $b = msg($uid, 'sequence_num: 0 capabilities: 1 agent_description '
            . '{ identifying_attributes { key: "k" value { string_value: "'
            . 's" } } } health { healthy: true last_error: "'
            . ('s' x $n) . '" }');
        return $b if length $b == $len;
        $n += $len - length $b;
    }
    die "cannot make a message of $len bytes\n";
}

my $ub = random_uid();
($s, $h, $body, $m) = post(sized($ub, $MAX));
is($s, 200, "a body of exactly opamp_max_message_size ($MAX) bytes: 200");
is($t->agent($ub)->{sequence_num}, 0, 'exactly the limit: stored');
($s, $h, $body) = $t->http_post(sized(random_uid(), $MAX + 1));
is($s, 413, 'one byte more: 413');
still_serves('a body one byte over the limit');

my ($gz_max, $gz_over);
my $ug = random_uid();
gzip(\sized($ug, $MAX) => \$gz_max) or die $GzipError;
gzip(\sized(random_uid(), $MAX + 1) => \$gz_over) or die $GzipError;
($s, $h, $body) = $t->http_post($gz_max, 'Content-Encoding' => 'gzip');
is($s, 200, 'gzip inflating to exactly the limit: 200');
is($t->agent($ug)->{sequence_num}, 0, 'gzip, exactly the limit: stored');
($s, $h, $body) = $t->http_post($gz_over, 'Content-Encoding' => 'gzip');
is($s, 413, 'gzip inflating to one byte over the limit: 413');
still_serves('a gzip body inflating one byte over the limit');

my $bomb_plain = msg(random_uid(), 'sequence_num: 0 capabilities: 1 '
    . 'agent_description { identifying_attributes { key: "k" value { '
    . 'string_value: "' . ('x' x 400000) . '" } } }');
my $bomb;
gzip(\$bomb_plain => \$bomb) or die $GzipError;
ok(length $bomb < $MAX, '(the gzip bomb is ' . length($bomb)
   . ' bytes, inflating to ' . length($bomb_plain) . ')');
($s, $h, $body) = $t->http_post($bomb, 'Content-Encoding' => 'gzip');
is($s, 413, 'a gzip body that inflates over the limit: 413');
like($body, qr/gunzip/i, 'saying the inflated size is the problem');
still_serves('a gzip bomb');

my $gz_ok;
gzip(\$fits => \$gz_ok) or die $GzipError;
($s, $h, $body) = $t->http_post($gz_ok, 'Content-Encoding' => 'gzip');
is($s, 200, 'a gzip body that inflates to just under the limit: 200');

($s, $h, $body) = $t->http_post("\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03"
                                . "this is not deflate data at all",
                                'Content-Encoding' => 'gzip');
is($s, 400, 'corrupt gzip: 400');
like($body, qr/gzip/, 'saying so');
still_serves('corrupt gzip');

my $gz_cut = substr($gz, 0, length($gz) - 12);
($s, $h, $body) = $t->http_post($gz_cut, 'Content-Encoding' => 'gzip');
is($s, 400, 'truncated gzip: 400');
still_serves('truncated gzip');

($s, $h, $body) = $t->http_post($plain, 'Content-Encoding' => 'gzip');
is($s, 400, 'Content-Encoding: gzip on a body that is not gzip: 400');
still_serves('a plain body declared gzip');

($s, $h, $body, $m) = post('');
is($s, 400, 'an empty body: 400 (no instance_uid)');
is($m->{error_response}{type}, 'ServerErrorResponseType_BadRequest',
   'empty body: BAD_REQUEST');
still_serves('an empty body');

# --- request bodies as nginx may hand them over ---------------------------

# raw bytes on one connection; the responses, each [status, {headers}, body]
sub raw {
    my ($req) = @_;
    my $c = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                  PeerPort => $t->port, Proto => 'tcp',
                                  Timeout => 5) or die "connect: $!\n";
    binmode $c;
    syswrite($c, $req);
    my $in = '';
    my $sel = IO::Select->new($c);
    my $deadline = time + 10;
    while (time < $deadline && $sel->can_read($deadline - time)) {
        my $n = sysread($c, $in, 65536, length $in);
        last unless $n;
    }
    close $c;
    my @r;
    while ((my $i = index($in, "\r\n\r\n")) >= 0) {
        my $head = substr($in, 0, $i);
        $in = substr($in, $i + 4);
        my ($st) = $head =~ m{^HTTP/1\.\d (\d+)};
        my %hd = map { /^([^:]+):\s*(.*)$/ ? (lc $1 => $2) : () }
                 split /\r\n/, $head;
        my $len = $hd{'content-length'} // 0;
        push @r, [ $st, \%hd, substr($in, 0, $len, '') ];
    }
    return @r;
}

sub chunked {
    my ($b, $size) = @_;
    my $out = '';
    while (length $b) {
        my $c = substr($b, 0, $size, '');
        $out .= sprintf("%x\r\n", length $c) . $c . "\r\n";
    }
    return $out . "0\r\n\r\n";
}

my $HEAD = "POST /v1/opamp HTTP/1.1\r\nHost: 127.0.0.1\r\n"
           . "Content-Type: application/x-protobuf\r\n";

my $uc = random_uid();
my $cmsg = msg($uc, "sequence_num: 0 capabilities: 1 $DESC");
my @r = raw($HEAD . "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            . chunked($cmsg, 7));
is($r[0][0], 200, 'a chunked request body (7-byte chunks): 200');
is(eval { $t->s2a($r[0][2])->{instance_uid} } // '', $uc,
   'chunked: the reply is for the agent');
is($t->decode('AgentDescription', $t->agent($uc)->{description} // ''),
   $t->decode('AgentDescription', $t->encode('AgentDescription', $DESC_TEXT)),
   'chunked: the description is stored whole');

@r = raw($HEAD . "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
         . chunked($big, 1000));
is($r[0][0], 413, 'a chunked body over opamp_max_message_size: 413');
still_serves('a chunked body over the limit');

my $uk = random_uid();
my $k2 = msg($uk, "sequence_num: 0 capabilities: 1 $DESC");
@r = raw($HEAD . 'Content-Length: ' . length($cmsg) . "\r\n\r\n" . $cmsg
         . $HEAD . "Connection: close\r\nContent-Length: " . length($k2)
         . "\r\n\r\n" . $k2);
is(scalar @r, 2, 'two pipelined requests on one keepalive connection: '
   . 'two responses');
is(eval { $t->s2a($r[0][2] // '')->{instance_uid} } // '', $uc,
   'keepalive: the first reply is for the first agent');
is(eval { $t->s2a($r[1][2] // '')->{instance_uid} } // '', $uk,
   'keepalive: the second reply is for the second agent');
is($t->agent($uk)->{sequence_num}, 0, 'keepalive: the second one is stored');

my $uk2 = random_uid();
my $k3 = msg($uk2, "sequence_num: 0 capabilities: 1 $DESC");
@r = raw($HEAD . 'Content-Length: ' . length($big) . "\r\n\r\n" . $big
         . $HEAD . "Connection: close\r\nContent-Length: " . length($k3)
         . "\r\n\r\n" . $k3);
is($r[0][0], 413, 'keepalive: an oversized body first: 413');
# the refused body is read and thrown away (it has a Content-Length), so
# the connection stays usable: the request behind it is served exactly
is(scalar @r, 2, 'keepalive: the connection goes on: two responses');
is($r[1][0], 200, 'the request behind the refused body: 200');
is(eval { $t->s2a($r[1][2] // '')->{instance_uid} } // '', $uk2,
   'its reply is for its agent');
is($t->agent($uk2)->{sequence_num}, 0, 'and it is stored');

my $ue = random_uid();
my $e = msg($ue, "sequence_num: 0 capabilities: 1 $DESC");
@r = raw($HEAD . "Expect: 100-continue\r\nConnection: close\r\n"
         . 'Content-Length: ' . length($e) . "\r\n\r\n" . $e);
is($r[-1][0], 200, 'Expect: 100-continue: 200 in the end');
is($t->agent($ue)->{sequence_num}, 0, 'Expect: 100-continue: stored');

# client_max_body_size below opamp_max_message_size is raised to it
my $uc2 = random_uid();
my $c3k = sized($uc2, 3000);
($s, $h, $body, $m) = post($c3k, -path => '/cmbs');
is($s, 200, 'client_max_body_size 1k, opamp_max_message_size 8k: a 3000-byte '
   . 'body is taken');
is($t->agent($uc2)->{sequence_num}, 0, 'and stored');
($s, $h, $body) = $t->http_post(sized(random_uid(), 9000), -path => '/cmbs');
is($s, 413, 'and 9000 bytes get 413');

# the default opamp_max_message_size (4m) lifts nginx's default
# client_max_body_size (1m); what one agent keeps is capped apart from it
# (opamp_max_agent_state, default 1m)
my $u2m = random_uid();
my $redis_in = sub {
    my ($n) = $t->redis('INFO', 'stats') =~ /total_net_input_bytes:(\d+)/;
    return $n // 0;
};
my $in0 = $redis_in->();
($s, $h, $body, $m) = post(sized($u2m, 2 * 1024 * 1024), -path => '/big');
cmp_ok($redis_in->() - $in0, '<', 100 * 1024, 'a single message over '
       . 'opamp_max_agent_state is refused by the worker: its 2 MB never '
       . 'go to Redis');
is($s, 400, 'a 2 MB body with the default limits: taken by nginx, but 400 '
   . 'over opamp_max_agent_state');
like($m->{error_response}{error_message}, qr/opamp_max_agent_state/,
     'a 2 MB body: the reason names opamp_max_agent_state');
is($t->agent($u2m)->{sequence_num}, undef, 'a 2 MB body: nothing stored');
my $u1m = random_uid();
($s, $h, $body, $m) = post(sized($u1m, 1000 * 1000), -path => '/big');
is($s, 200, 'a 1 MB body with the default limits: 200');
is($t->agent($u1m)->{sequence_num}, 0, 'a 1 MB body: stored');

# a body too large for nginx's memory buffer goes to a temporary file
my $uf = random_uid();
my $ftext = 'identifying_attributes { key: "service.name" value { '
    . 'string_value: "file-body" } } non_identifying_attributes { key: '
    . '"blob" value { string_value: "' . ('y' x 60000) . '" } }';
($s, $h, $body, $m) = post(msg($uf, "sequence_num: 0 capabilities: 1 "
                                    . "agent_description { $ftext }"),
                           -path => '/big');
is($s, 200, 'a 60 KB body (buffered to a file by nginx): 200');
is($m->{instance_uid}, $uf, 'file body: the reply is for the agent');
is($t->agent($uf)->{description} // '',
   $t->encode('AgentDescription', $ftext),
   'file body: the description is stored byte for byte');

is_deeply([ $t->worker_pids ], \@workers,
          'the same worker all along (none crashed)');

# --- the connection settings offer: once per content, again on a change ---

($s, $h, $body, $m) = post(msg($u4, 'sequence_num: 10 capabilities: 0x2001'));
is(($m->{flags} // 0) & 1, 1, 'a sequence gap of a settings agent: '
   . 'ReportFullState');
ok(!$m->{connection_settings},
   'without the connection settings (offered once per content)');
($s, $h, $body, $m) = post(msg($u4, "sequence_num: 11 capabilities: 0x2001 "
                                    . $DESC));
ok(!$m->{connection_settings}, 'nor on the full state report');

$t->write_conf($LOCS,
    workers => 1, location => "
            opamp_heartbeat_interval 23s;
            opamp_max_message_size $MAX;");
ok($t->reload, 'nginx reloaded with opamp_heartbeat_interval 23s');
($s, $h, $body, $m) = post(msg($u4, 'sequence_num: 12 capabilities: 0x2001'));
is($m->{connection_settings}{opamp}{heartbeat_interval_seconds}, 23,
   'the changed heartbeat interval is offered to the agent');
is($t->agent($u4)->{cs_hash}, unpack('H*', $m->{connection_settings}{hash}
                                            // ''),
   'with a new hash, recorded');
($s, $h, $body, $m) = post(msg($u4, 'sequence_num: 13 capabilities: 0x2001'));
ok(!$m->{connection_settings}, 'and only once');
($s, $h, $body, $m) = post(msg($u4b, 'sequence_num: 2 capabilities: 0x1'));
ok(!$m->{connection_settings},
   'an agent without the capability still gets nothing');

# --- a second fleet on the same Redis, under another prefix -----------------

my $t2 = OpAMPTest->new(redis_port => $t->redis_port);
$t2->start_nginx('', prefix => 'test2:');
my $u6 = random_uid();
($s, $h, $body, $m) = post(msg($u6, "sequence_num: 0 capabilities: 1 $DESC"),
                           -port => $t2->port);
is($s, 200, 'prefix test2: 200');
is($m->{instance_uid}, $u6, 'prefix test2: a reply');
my $a6 = $t->agent($u6, 'test2:');
is($a6->{sequence_num}, 0, 'the agent hash is test2:agent:{uid}');
ok(defined $t->redis('ZSCORE', 'test2:agents', uid_text($u6)),
   'the index is test2:agents');
is($t->redis('EXISTS', $t->agent_key($u6)), 0, 'nothing under opamp:');
ok(!defined $t->redis('ZSCORE', 'opamp:agents', uid_text($u6)),
   'not in opamp:agents');
my $ch = $t->redis('PUBSUB', 'CHANNELS', 'test2:*') // [];
ok(scalar(grep { /^test2:worker:/ } @$ch)
   && scalar(grep { $_ eq 'test2:fleet' } @$ch),
   'its workers subscribe to test2:worker:... and test2:fleet')
    or diag("@$ch");
($s, $h, $body, $m) = post(msg($u6, 'sequence_num: 1 capabilities: 1'));
is($m->{flags}, 1, 'the opamp: fleet does not know the test2: agent');
$t2->done;

$t->done;
done_testing;
