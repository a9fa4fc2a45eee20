#!/usr/bin/perl

# Remote config and the other server offers, written into Redis as
# docs/redis-schema.md says a control plane does, delivered to agents over
# WebSocket (pushed, across workers) and plain HTTP (next poll).

use strict;
use warnings;

use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";

use OpAMPTest;
use OpAMPFleet;
use Digest::SHA;

my $t = OpAMPTest->new;
$t->start_redis;
# nginx workers run as an unprivileged user: let them read the file
chmod 0755, $t->{dir};
mkdir "$t->{dir}/pkg", 0755;
my $tarball = join '', map { chr(($_ * 7) % 256) } 0 .. 4095;
{
    open my $f, '>', "$t->{dir}/pkg/agent.tgz" or die;
    binmode $f;
    print $f $tarball;
}

$t->start_nginx("
        location /pkg/ { alias $t->{dir}/pkg/; }", workers => 2, location => '
            opamp_heartbeat_interval 17s;
            opamp_custom_capabilities io.example.chat;');

my $P = 'opamp:';

# capabilities: ReportsStatus 0x1, AcceptsRemoteConfig 0x2,
# AcceptsPackages 0x8, ReportsOwnMetrics 0x40, AcceptsOpAMPConnection-
# Settings 0x100, AcceptsOtherConnectionSettings 0x200,
# AcceptsRestartCommand 0x400, ReportsHeartbeat 0x2000,
# ReportsAvailableComponents 0x4000
my $CAPS = 0x1 | 0x2;

sub desc {
    my (%a) = @_;
    return 'agent_description { '
           . join(' ', map { "identifying_attributes { key: \"$_\" "
                             . "value { string_value: \"$a{$_}\" } }" }
                  sort keys %a)
           . ' non_identifying_attributes { key: "host.name" '
           . 'value { string_value: "h1" } } }';
}

sub hash_escape {
    return join '', map { sprintf '\\%03o', $_ } unpack 'C*', pack 'H*', shift;
}

# writes a group config the way docs/redis-schema.md shows
sub set_group {
    my ($name, $selector, $priority, %files) = @_;
    my $h = OpAMPFleet::config_hash(%files);
    my @f;
    for (sort keys %files) {
        push @f, "file:$_", $files{$_}[0];
        push @f, "type:$_", $files{$_}[1] if defined $files{$_}[1];
    }
    $t->redis('MULTI');
    $t->redis('DEL', "${P}config:group:$name");
    $t->redis('HSET', "${P}config:group:$name", selector => $selector,
              priority => $priority, hash => $h, updated_ms => 1, @f);
    $t->redis('ZADD', "${P}groups", $priority, $name);
    $t->redis('INCR', "${P}config_version");
    $t->redis('EXEC');
    $t->redis('PUBLISH', "${P}fleet", 'config');
    return $h;
}

sub set_agent_config {
    my ($uid, %files) = @_;
    my $h = OpAMPFleet::config_hash(%files);
    my $key = "${P}config:agent:{" . uid_text($uid) . '}';
    my @f = map { ("file:$_", $files{$_}[0],
                   defined $files{$_}[1] ? ("type:$_", $files{$_}[1]) : ()) }
            sort keys %files;
    $t->redis('DEL', $key);
    $t->redis('HSET', $key, hash => $h, updated_ms => 1, @f);
    $t->redis('INCR', "${P}config_version");
    my $ch = $t->redis('HGET', "${P}agent:{" . uid_text($uid) . '}',
                       'channel');
    $t->redis('PUBLISH', $ch, 'config ' . uid_text($uid)) if $ch;
    return $h;
}

sub remote_config_of {
    my ($text) = @_;
    return undef unless $text =~ /remote_config \{/;
    my %files;
    while ($text =~ /config_map \{\s*key: "([^"]*)"\s*value \{\s*body: "((?:[^"\\]|\\.)*)"(?:\s*content_type: "([^"]*)")?/g) {
        $files{$1} = [ $2, $3 ];
    }
    return \%files;
}

# --- a WebSocket agent in a group gets the group's config on connect ----

my $h1 = set_group('checkout', 'service.name=checkout,env=prod', 10,
                   'collector.yaml' => [ 'receivers: {otlp: {}}',
                                         'text/yaml' ]);

my $u1 = random_uid();
my $a1 = OpAMPFleet->connect_ws(port => $t->port);
$a1->send_msg($t->a2s('instance_uid: "' . uid_escape($u1) . '" '
                      . "sequence_num: 0 capabilities: $CAPS "
                      . desc('service.name' => 'checkout', env => 'prod')));
my $raw = $a1->recv_msg(5) // '';
my $r = $t->s2a_text($raw);
my $rc = remote_config_of($r);
is_deeply($rc, { 'collector.yaml' => [ 'receivers: {otlp: {}}',
                                       'text/yaml' ] },
          'group member gets the group config on connect') or diag $r;
like($r, qr/capabilities: 63\b/, 'server capabilities include '
     . 'OffersRemoteConfig and OffersPackages');
like($r, qr/custom_capabilities \{\s*capabilities: "io.example.chat"/,
     'the server custom capabilities are announced');
ok(index($raw, "\x12\x20" . pack('H*', $h1)) >= 0,
   'config_hash (field 2, 32 bytes) is the SHA-256 of the documented layout');
is($t->agent($u1)->{offered_hash}, $h1, 'offered_hash recorded');
is($t->agent($u1)->{desired_config}, 'group:checkout',
   'the resolution is recorded in the agent hash');
ok(!exists $t->agent($u1)->{attributes},
   'no attributes stored: selectors read the description');

# the agent applies it and says so: recorded
$a1->send_msg($t->a2s('instance_uid: "' . uid_escape($u1) . '" '
                      . "sequence_num: 1 capabilities: $CAPS "
                      . 'remote_config_status { last_remote_config_hash: "'
                      . hash_escape($h1) . '" status: '
                      . 'RemoteConfigStatuses_APPLIED }'));
$r = $t->s2a_text($a1->recv_msg(5) // '');
unlike($r, qr/remote_config \{/, 'not sent again once applied');
my $st = $t->agent($u1);
is($st->{config_status}, 'APPLIED', 'config_status APPLIED recorded');
is($st->{config_hash}, $h1, 'config_hash recorded (hex)');

# --- a group change is pushed at once ------------------------------------

my $h2 = set_group('checkout', 'service.name=checkout,env=prod', 10,
                   'collector.yaml' => [ 'receivers: {}', 'text/yaml' ],
                   'extra.yaml' => [ 'x: 1' ]);
my $m = $a1->recv_msg(5);
$rc = remote_config_of($t->s2a_text($m // ''));
is_deeply($rc, { 'collector.yaml' => [ 'receivers: {}', 'text/yaml' ],
                 'extra.yaml' => [ 'x: 1', undef ] },
          'a group change is pushed to the WebSocket agent without a poll');

# FAILED with a message is recorded
$a1->send_msg($t->a2s('instance_uid: "' . uid_escape($u1) . '" '
                      . "sequence_num: 2 capabilities: $CAPS "
                      . 'remote_config_status { last_remote_config_hash: "'
                      . hash_escape($h2) . '" status: '
                      . 'RemoteConfigStatuses_FAILED error_message: "bad '
                      . 'receiver" }'));
$a1->recv_msg(5);
$st = $t->agent($u1);
is($st->{config_status}, 'FAILED', 'FAILED recorded');
is($st->{config_error}, 'bad receiver', 'with its error message');

# --- precedence ----------------------------------------------------------

my $ha = set_agent_config($u1, 'own.yaml' => [ 'own: true' ]);
$rc = remote_config_of($t->s2a_text($a1->recv_msg(5) // ''));
is_deeply($rc, { 'own.yaml' => [ 'own: true', undef ] },
          "the agent's own config wins over its group");

$t->redis('DEL', "${P}config:agent:{" . uid_text($u1) . '}');
set_group('all', '', 20, 'all.yaml' => [ 'all: 1' ]);
$rc = remote_config_of($t->s2a_text($a1->recv_msg(5) // ''));
is_deeply($rc, { 'all.yaml' => [ 'all: 1', undef ] },
          'a group of higher priority wins');

set_group('aaa', 'env=prod', 20, 'aaa.yaml' => [ 'aaa: 1' ]);
$rc = remote_config_of($t->s2a_text($a1->recv_msg(5) // ''));
is_deeply($rc, { 'aaa.yaml' => [ 'aaa: 1', undef ] },
          'equal priorities: the name that sorts first wins');

# --- capability gating and selectors -------------------------------------

my $u2 = random_uid();
my $a2 = OpAMPFleet->connect_ws(port => $t->port);
$a2->send_msg($t->a2s('instance_uid: "' . uid_escape($u2) . '" '
                      . 'sequence_num: 0 capabilities: 1 '
                      . desc('service.name' => 'checkout', env => 'prod')));
$r = $t->s2a_text($a2->recv_msg(5) // '');
unlike($r, qr/remote_config/,
       'an agent without AcceptsRemoteConfig gets no config');

for my $g (qw(all aaa)) {
    $t->redis('DEL', "${P}config:group:$g");
    $t->redis('ZREM', "${P}groups", $g);
}
$t->redis('INCR', "${P}config_version");

my $u3 = random_uid();
my ($s, $hd, $body) = $t->http_post($t->a2s(
    'instance_uid: "' . uid_escape($u3) . '" '
    . "sequence_num: 0 capabilities: $CAPS "
    . desc('service.name' => 'checkout', env => 'staging')));
unlike($t->s2a_text($body), qr/remote_config/,
       'an agent outside the selector gets nothing');

# a selector written directly without "key=value" matches no agent, even
# at the highest priority
set_group('broken', 'service.name', 99, 'broken.yaml' => [ 'b: 1' ]);

# --- plain HTTP: the config comes with the next poll -----------------------

my $u4 = random_uid();
($s, $hd, $body) = $t->http_post($t->a2s(
    'instance_uid: "' . uid_escape($u4) . '" '
    . "sequence_num: 0 capabilities: $CAPS "
    . desc('service.name' => 'checkout', env => 'prod')));
is($s, 200, 'HTTP agent registered');
$rc = remote_config_of($t->s2a_text($body));
is_deeply([ sort keys %{ $rc // {} } ], [ 'collector.yaml', 'extra.yaml' ],
          'HTTP agent gets the group config in its reply (not the group '
          . 'with a broken selector)');
($s, $hd, $body) = $t->http_post($t->a2s(
    'instance_uid: "' . uid_escape($u4) . '" '
    . "sequence_num: 1 capabilities: $CAPS"));
unlike($t->s2a_text($body), qr/remote_config/,
       'not repeated in every poll while the agent applies it');

my $h5 = set_group('checkout', 'service.name=checkout', 10,
                   'collector.yaml' => [ 'v: 5' ]);
($s, $hd, $body) = $t->http_post($t->a2s(
    'instance_uid: "' . uid_escape($u4) . '" '
    . "sequence_num: 2 capabilities: $CAPS"));
$rc = remote_config_of($t->s2a_text($body));
is_deeply($rc, { 'collector.yaml' => [ 'v: 5', undef ] },
          'a changed config reaches the HTTP agent at its next poll');

# --- restart command ------------------------------------------------------

my $u6 = random_uid();
my $a6 = OpAMPFleet->connect_ws(port => $t->port);
$a6->send_msg($t->a2s('instance_uid: "' . uid_escape($u6) . '" '
                      . 'sequence_num: 0 capabilities: ' . (0x1 | 0x400)
                      . ' ' . desc('service.name' => 'x')));
$a6->recv_msg(5);
$t->redis('SET', "${P}command:{" . uid_text($u6) . '}', 'restart');
$t->redis('PUBLISH', $t->agent($u6)->{channel}, 'config ' . uid_text($u6));
$r = $t->s2a_text($a6->recv_msg(5) // '');
like($r, qr/command \{\s*\}/, 'restart command pushed (CommandType 0)');
is($t->redis('EXISTS', "${P}command:{" . uid_text($u6) . '}'), 0,
   'and taken from Redis');

$t->redis('SET', "${P}command:{" . uid_text($u2) . '}', 'restart');
$t->redis('PUBLISH', $t->agent($u2)->{channel}, 'config ' . uid_text($u2));
ok(!defined $a2->recv_msg(1), 'no restart for an agent without '
   . 'AcceptsRestartCommand');
is($t->redis('EXISTS', "${P}command:{" . uid_text($u2) . '}'), 1,
   'its command stays queued');

# --- custom messages both ways ---------------------------------------------

my $u7 = random_uid();
my $a7 = OpAMPFleet->connect_ws(port => $t->port);
$a7->send_msg($t->a2s('instance_uid: "' . uid_escape($u7) . '" '
                      . 'sequence_num: 0 capabilities: 1 '
                      . desc('service.name' => 'x')
                      . ' custom_capabilities { capabilities: '
                      . '"io.example.chat" } custom_message { capability: '
                      . '"io.example.chat" type: "hello" data: "hi" }'));
$a7->recv_msg(5);
my $x = $t->redis('XRANGE', "${P}custom_messages", '-', '+');
my %last = @{ $x->[-1][1] };
is_deeply(\%last, { instance_uid => uid_text($u7),
                    capability => 'io.example.chat', type => 'hello',
                    data => 'hi' },
          'a custom message from an agent lands in the stream');

$t->redis('RPUSH', "${P}outbox:{" . uid_text($u7) . '}',
          "io.example.other\nnope\nx");
$t->redis('RPUSH', "${P}outbox:{" . uid_text($u7) . '}',
          "io.example.chat\nreply\nhello\nagent");
$t->redis('PUBLISH', $t->agent($u7)->{channel}, 'config ' . uid_text($u7));
$r = $t->s2a_text($a7->recv_msg(5) // '');
like($r, qr/custom_message \{\s*capability: "io.example.chat"\s*type: "reply"\s*data: "hello\\nagent"/,
     'a queued custom message is pushed to the agent');
is_deeply($t->redis('LRANGE', "${P}outbox:{" . uid_text($u7) . '}', 0, -1),
          [ "io.example.other\nnope\nx" ],
          'a message for a capability the agent lacks stays queued');

# --- connection settings and packages ---------------------------------------

my $cso = OpAMPFleet::encode('ConnectionSettingsOffers',
    'own_metrics { destination_endpoint: "http://127.0.0.1:4318/v1/metrics" '
    . 'headers { headers { key: "x-token" value: "t" } } } '
    . 'other_connections { key: "db" value { destination_endpoint: "x" } }');
$t->redis('SET', "${P}connection_settings", $cso);

my $u8 = random_uid();
($s, $hd, $body) = $t->http_post($t->a2s(
    'instance_uid: "' . uid_escape($u8) . '" sequence_num: 0 '
    . 'capabilities: ' . (0x1 | 0x40 | 0x2000) . ' '
    . desc('service.name' => 'x')));
$r = $t->s2a_text($body);
like($r, qr/heartbeat_interval_seconds: 17/, 'heartbeat from the directive');
like($r, qr/own_metrics \{\s*destination_endpoint: "http:\/\/127.0.0.1:4318\/v1\/metrics"/,
     'own_metrics offered to an agent with ReportsOwnMetrics');
like($r, qr/key: "x-token"/, 'with its headers');
unlike($r, qr/other_connections/, 'other_connections not offered without '
       . 'AcceptsOtherConnectionSettings');
($s, $hd, $body) = $t->http_post($t->a2s(
    'instance_uid: "' . uid_escape($u8) . '" sequence_num: 1 '
    . 'capabilities: ' . (0x1 | 0x40 | 0x2000)));
unlike($t->s2a_text($body), qr/connection_settings/,
       'the same offer is not repeated');

my $u9 = random_uid();
($s, $hd, $body) = $t->http_post($t->a2s(
    'instance_uid: "' . uid_escape($u9) . '" sequence_num: 0 '
    . 'capabilities: ' . (0x1 | 0x200) . ' ' . desc('service.name' => 'x')));
$r = $t->s2a_text($body);
like($r, qr/other_connections \{\s*key: "db"/,
     'other_connections offered with AcceptsOtherConnectionSettings');
unlike($r, qr/own_metrics|opamp \{/, 'and nothing it did not declare');

my $pk = OpAMPFleet::encode('PackagesAvailable',
    'packages { key: "agent" value { type: PackageType_TopLevel '
    . 'version: "1.2" file { download_url: "http://127.0.0.1:'
    . $t->port . '/pkg/agent.tgz" content_hash: "'
    . uid_escape(Digest::SHA::sha256($tarball)) . '" } } } '
    . 'all_packages_hash: "\252\273"');
$t->redis('HSET', "${P}packages", hash => 'aabb', offer => $pk);

my $u10 = random_uid();
($s, $hd, $body) = $t->http_post($t->a2s(
    'instance_uid: "' . uid_escape($u10) . '" sequence_num: 0 '
    . 'capabilities: ' . (0x1 | 0x8) . ' ' . desc('service.name' => 'x')));
$r = $t->s2a_text($body);
like($r, qr/packages_available \{\s*packages \{\s*key: "agent"/,
     'packages offered to an agent with AcceptsPackages');
my ($url) = $r =~ /download_url: "([^"]+)"/;
my ($ps, $ph, $pbody) = $t->http_post('', -method => 'GET',
    -path => ($url // '') =~ s{^http://[^/]+}{}r);
is($ps, 200, 'the same nginx serves the package file at its download_url');
is(Digest::SHA::sha256_hex($pbody), Digest::SHA::sha256_hex($tarball),
   'and its bytes match the offered content_hash');
($s, $hd, $body) = $t->http_post($t->a2s(
    'instance_uid: "' . uid_escape($u10) . '" sequence_num: 1 '
    . 'capabilities: ' . (0x1 | 0x8) . ' package_statuses { '
    . 'server_provided_all_packages_hash: "\252\273" }'));
unlike($t->s2a_text($body), qr/packages_available/,
       'not offered again once the agent reports the same hash');
is($t->agent($u10)->{packages_hash}, 'aabb', 'packages_hash recorded');
($s, $hd, $body) = $t->http_post($t->a2s(
    'instance_uid: "' . uid_escape($u3) . '" sequence_num: 1 '
    . "capabilities: 1"));
unlike($t->s2a_text($body), qr/packages_available/,
       'no packages for an agent without AcceptsPackages');

# --- ReportAvailableComponents ----------------------------------------------

my $u11 = random_uid();
($s, $hd, $body) = $t->http_post($t->a2s(
    'instance_uid: "' . uid_escape($u11) . '" sequence_num: 0 '
    . 'capabilities: ' . (0x1 | 0x4000) . ' ' . desc('service.name' => 'x')));
like($t->s2a_text($body), qr/flags: 2\b/,
     'ReportAvailableComponents asked when none are stored');
($s, $hd, $body) = $t->http_post($t->a2s(
    'instance_uid: "' . uid_escape($u11) . '" sequence_num: 1 '
    . 'capabilities: ' . (0x1 | 0x4000) . ' available_components { '
    . 'hash: "\001" }'));
like($t->s2a_text($body), qr/flags: 2\b/,
     'asked again when only their hash comes (no list of it stored)');
($s, $hd, $body) = $t->http_post($t->a2s(
    'instance_uid: "' . uid_escape($u11) . '" sequence_num: 2 '
    . 'capabilities: ' . (0x1 | 0x4000) . ' available_components { '
    . 'components { key: "receivers" value { } } hash: "\001" }'));
unlike($t->s2a_text($body), qr/flags: 2\b/, 'and not once they are');
($s, $hd, $body) = $t->http_post($t->a2s(
    'instance_uid: "' . uid_escape($u11) . '" sequence_num: 3 '
    . 'capabilities: ' . (0x1 | 0x4000) . ' available_components { '
    . 'hash: "\001" }'));
unlike($t->s2a_text($body), qr/flags: 2\b/,
       'nor when the hash of the stored list comes alone');

# --- an agent that changes its uid on its connection -------------------------

# a config for the uid it reports now reaches the connection; one for the
# uid it left does not; another agent's reaches only that agent
my ($uA, $uB, $uC) = (random_uid(), random_uid(), random_uid());
my $a8 = OpAMPFleet->connect_ws(port => $t->port);
my $a9 = OpAMPFleet->connect_ws(port => $t->port);
$a8->send_msg($t->a2s('instance_uid: "' . uid_escape($uA) . '" '
                      . "sequence_num: 0 capabilities: $CAPS "
                      . desc('service.name' => 'solo')));
ok(defined $a8->recv_msg(5), 'an agent answered under its first uid');
$a9->send_msg($t->a2s('instance_uid: "' . uid_escape($uC) . '" '
                      . "sequence_num: 0 capabilities: $CAPS "
                      . desc('service.name' => 'solo')));
ok(defined $a9->recv_msg(5), 'another agent answered');
$a8->send_msg($t->a2s('instance_uid: "' . uid_escape($uB) . '" '
                      . "sequence_num: 0 capabilities: $CAPS "
                      . desc('service.name' => 'solo')));
ok(defined $a8->recv_msg(5), 'the first agent answered under its new uid');

# "not pushed" is seen by what comes first: each wrong push would be
# handled by its worker before the right one that follows it (one pub/sub
# connection and one command connection per worker, answered in order),
# so it would arrive first on the connection
set_agent_config($uB, 'b.yaml' => [ 'b: 1' ]);
$rc = remote_config_of($t->s2a_text($a8->recv_msg(5) // ''));
is_deeply($rc, { 'b.yaml' => [ 'b: 1', undef ] },
          'a config for the new uid is pushed on the connection');
set_agent_config($uA, 'a.yaml' => [ 'a: 1' ]);
set_agent_config($uC, 'c.yaml' => [ 'c: 1' ]);
$rc = remote_config_of($t->s2a_text($a9->recv_msg(5) // ''));
is_deeply($rc, { 'c.yaml' => [ 'c: 1', undef ] },
          "the other agent's config reaches it, and is the first thing it "
          . "receives: the first agent's config was not pushed to it");
set_agent_config($uB, 'b.yaml' => [ 'b: 2' ]);
$rc = remote_config_of($t->s2a_text($a8->recv_msg(5) // ''));
is_deeply($rc, { 'b.yaml' => [ 'b: 2', undef ] },
          'the next config for the new uid is the first thing the '
          . 'connection receives: the config for the uid it left was not '
          . 'pushed on it');
$a8->close;
$a9->close;

$_->close for $a1, $a2, $a6, $a7;

$t->done;
done_testing;
