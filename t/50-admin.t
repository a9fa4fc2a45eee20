#!/usr/bin/perl

# The admin API (docs/admin-api.md): JSON over HTTP, every endpoint, what
# it writes into Redis, what agents receive as a result, and every bad
# input answered with a 4xx JSON error that changes nothing in Redis (but
# the audit log, t/52).

use strict;
use warnings;

use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use JSON::PP;

use OpAMPTest;
use OpAMPFleet;

my $t = OpAMPTest->new;
$t->start_redis;

# nginx workers run unprivileged: the password file must be readable
chmod 0755, $t->{dir};
{
    open my $f, '>', "$t->{dir}/htpasswd" or die;
    print $f "admin:{PLAIN}s3cret\n";
    close $f;
    chmod 0644, "$t->{dir}/htpasswd";
}
$t->start_nginx('
        location /admin/ {
            opamp_admin;
            client_max_body_size 16k;
        }
        location /locked/ {
            deny all;
            opamp_admin;
        }
        location /basic/ {
            auth_basic "opamp admin";
            auth_basic_user_file htpasswd;
            opamp_admin;
        }
        location /big/ {
            opamp_admin;
            client_max_body_size 16m;
        }', workers => 2);

my $json = JSON::PP->new->canonical;

sub api {
    my ($method, $path, $body, %h) = @_;
    my ($s, $hd, $b) = $t->http_post($body // '', -method => $method,
                                     -path => "/admin/$path",
                                     'Content-Type' => 'application/json',
                                     %h);
    my $data = eval { $json->decode($b) };
    return ($s, $data, $hd, $b);
}

sub msg {
    my ($uid, $text) = @_;
    return $t->a2s('instance_uid: "' . uid_escape($uid) . '" ' . $text);
}

sub desc {
    my ($svc, $env) = @_;
    return 'agent_description { identifying_attributes { key: '
           . "\"service.name\" value { string_value: \"$svc\" } } "
           . 'non_identifying_attributes { key: "env" value { '
           . "string_value: \"$env\" } } }";
}

# a snapshot of everything in Redis, to prove a refusal changed nothing
sub snapshot {
    my $keys = $t->redis('KEYS', '*');
    my %s;
    for my $k (sort @$keys) {
        next if $k =~ /sweep:lease$/;    # the sweep's, on its own timer
        next if $k =~ /:audit$/;         # refusals are audited (t/52)
        next if $k =~ /:hosts?(:|$)/;    # the hosts' own figures (t/57)
        my $type = $t->redis('TYPE', $k);
        $s{$k} = $type eq 'hash' ? $t->hgetall($k)
               : $type eq 'string' ? $t->redis('GET', $k)
               : $type eq 'zset' ? $t->redis('ZRANGE', $k, 0, -1, 'WITHSCORES')
               : $type eq 'list' ? $t->redis('LRANGE', $k, 0, -1)
               : $type;
    }
    return \%s;
}

# --- a small fleet -----------------------------------------------------------

my @http;
for my $i (0 .. 4) {
    my $u = random_uid();
    push @http, $u;
    my ($s) = $t->http_post(msg($u, 'sequence_num: 0 capabilities: 3 '
        . desc($i < 3 ? 'web' : 'db', $i % 2 ? 'prod' : 'dev')
        . ($i == 1 ? ' health { healthy: false }' : ' health { healthy: true }')
        . ($i == 2 ? ' remote_config_status { status: '
                     . 'RemoteConfigStatuses_FAILED error_message: "nope" }'
                   : '')
        . ($i == 0 ? ' effective_config { config_map { config_map { key: '
                     . '"collector.yaml" value { body: "receivers: {}\n" '
                     . 'content_type: "text/yaml" } } } }' : '')));
    die "agent $i not registered" unless $s == 200;
}
$t->http_post(msg($http[4], 'sequence_num: 1 capabilities: 3 agent_disconnect {}'));

my $wu = random_uid();
my $ws = OpAMPFleet->connect_ws(port => $t->port);
$ws->send_msg(msg($wu, 'sequence_num: 0 capabilities: ' . (0x1 | 0x2 | 0x8 | 0x40 | 0x100 | 0x400)
                  . ' ' . desc('web', 'prod')
                  . ' custom_capabilities { capabilities: "io.example.chat" }'));
$ws->recv_msg(5);

# --- listing ------------------------------------------------------------------

my ($s, $d) = api('GET', 'agents');
is($s, 200, 'GET agents: 200');
is(scalar @{ $d->{agents} }, 6, 'all six agents listed');
is($d->{next_cursor}, undef, 'on one page');
my %by = map { $_->{instance_uid} => $_ } @{ $d->{agents} };
is($by{ uid_text($http[0]) }{attributes}{'service.name'}, 'web',
   'with their attributes');
is($by{ uid_text($wu) }{transport}, 'websocket', 'and transport');
is($by{ uid_text($wu) }{live}, JSON::PP::true, 'live for a connected agent');
is(exists $by{ uid_text($http[4]) }{live}
   ? $by{ uid_text($http[4]) }{live} : 'missing', JSON::PP::false,
   'not live after agent_disconnect (false, not missing)');

my @seen;
my $cursor = 0;
for (1 .. 10) {
    ($s, $d) = api('GET', "agents?limit=2&cursor=$cursor");
    push @seen, map { $_->{instance_uid} } @{ $d->{agents} };
    ok(@{ $d->{agents} } <= 2, 'a page holds at most limit agents');
    last unless defined $d->{next_cursor};
    $cursor = $d->{next_cursor};
}
is(scalar(@seen), 6, 'paging visits every agent');
is(scalar(keys %{ { map { $_ => 1 } @seen } }), 6, 'each once');

($s, $d) = api('GET', 'agents?attr=service.name%3Ddb');
is_deeply([ sort map { $_->{instance_uid} } @{ $d->{agents} } ],
          [ sort map { uid_text($_) } @http[3, 4] ], 'attr filter');
($s, $d) = api('GET', 'agents?attr=service.name=web&attr=env=prod');
is_deeply([ sort map { $_->{instance_uid} } @{ $d->{agents} } ],
          [ sort map { uid_text($_) } $http[1], $wu ],
          'two attr filters: both must match');
($s, $d) = api('GET', 'agents?healthy=0');
is_deeply([ map { $_->{instance_uid} } @{ $d->{agents} } ],
          [ uid_text($http[1]) ], 'healthy filter');
($s, $d) = api('GET', 'agents?config_status=FAILED');
is_deeply([ map { $_->{instance_uid} } @{ $d->{agents} } ],
          [ uid_text($http[2]) ], 'config_status filter');
($s, $d) = api('GET', 'agents?connected=0');
is_deeply([ map { $_->{instance_uid} } @{ $d->{agents} } ],
          [ uid_text($http[4]) ], 'connected filter');

# --- one agent -----------------------------------------------------------------

($s, $d) = api('GET', 'agents/' . uid_text($http[0]));
is($s, 200, 'GET agents/<uid>: 200');
is($d->{description}{identifying_attributes}[0]{value}{string_value}, 'web',
   'the description decoded to JSON');
is($d->{effective_config}{config_map}{config_map}{'collector.yaml'}{body},
   "receivers: {}\n", 'effective config body as text');
is($d->{health}{healthy}, JSON::PP::true, 'health decoded');
is($d->{sequence_num}, 0, 'numbers as numbers');

($s, $d) = api('GET', 'agents/' . uid_text($http[2]));
is($d->{remote_config_status}{status}, 'RemoteConfigStatuses_FAILED',
   'enums by name');
is($d->{config_error}, 'nope', 'config_error');

($s, $d) = api('GET', 'agents/' . uid_text(random_uid()));
is($s, 404, 'unknown agent: 404');
is($d->{error}, 'unknown agent', 'with a JSON error');
($s, $d) = api('GET', 'agents/not-a-uid');
is($s, 400, 'malformed uid: 400');

# --- configs --------------------------------------------------------------------

my $sub = $t->subscribe('opamp:fleet');
my $before = $t->redis('GET', 'opamp:config_version') // 0;

my $cfg = { files => { 'collector.yaml' => { body => "exporters: {}\n",
                                              content_type => 'text/yaml' },
                       'extra.conf' => { body => 'x' } },
            selector => 'service.name=web,env=prod', priority => 7 };
($s, $d) = api('PUT', 'configs/groups/web-prod', $json->encode($cfg));
is($s, 200, 'PUT a group config: 200');
my $want = OpAMPFleet::config_hash(
    'collector.yaml' => [ "exporters: {}\n", 'text/yaml' ],
    'extra.conf' => [ 'x' ]);
is($d->{config_hash}, $want, 'config_hash is the documented SHA-256');
is($t->redis('GET', 'opamp:config_version'), $before + 1,
   'config_version incremented');

# the files' order in the request does not matter: JSON text written by
# hand, the same three files listed one way and the other
{
    my %f = ('B.conf' => [ 'b', 'text/plain' ], 'a.yaml' => [ "a: 1\n" ],
             'c.txt' => [ 'c' ]);
    my $file = sub {
        my ($n) = @_;
        my ($b, $ty) = @{ $f{$n} };
        return $json->encode($n) . ': {"body": ' . $json->encode($b)
               . (defined $ty ? ', "content_type": ' . $json->encode($ty) : '')
               . '}';
    };
    my @h;
    for my $order ([ 'c.txt', 'a.yaml', 'B.conf' ],
                   [ 'B.conf', 'a.yaml', 'c.txt' ],
                   [ 'a.yaml', 'c.txt', 'B.conf' ])
    {
        my ($st, $dd) = api('PUT', 'configs/groups/order-test',
                            '{"files": {' . join(', ', map { $file->($_) }
                                                      @$order) . '}}');
        is($st, 200, "PUT with the files in the order @$order");
        push @h, $dd->{config_hash} // '';
    }
    is_deeply(\@h, [ (OpAMPFleet::config_hash(%f)) x 3 ],
              'config_hash is the same for every order, the documented one '
              . '(names in byte order: B.conf, a.yaml, c.txt)');
    api('DELETE', 'configs/groups/order-test');
}
my $g = $t->hgetall('opamp:config:group:web-prod');
is_deeply($g->{'file:collector.yaml'}, "exporters: {}\n", 'files in Redis');
is($g->{'type:collector.yaml'}, 'text/yaml', 'with content types');
is($g->{selector}, 'service.name=web,env=prod', 'selector in Redis');
is($t->redis('ZSCORE', 'opamp:groups', 'web-prod'), 7, 'in the groups zset');
is_deeply($sub->(5), [ 'opamp:fleet', 'config' ], 'PUBLISH on the fleet channel');

my $m = $ws->recv_msg(5);
ok(defined $m && index($m, "\x12\x20" . pack('H*', $want)) >= 0,
   'the WebSocket member receives the config pushed');

($s, $d) = api('GET', 'configs/groups/web-prod');
is_deeply($d->{files}, $cfg->{files}, 'GET returns the files');
is($d->{priority}, 7, 'and the priority');
($s, $d) = api('GET', 'configs/groups');
is($d->{groups}[0]{name}, 'web-prod', 'the groups listing');
is_deeply($d->{groups}[0]{files}, [ sort keys %{ $cfg->{files} } ],
          'with file names');

my $own = { files => { 'own.yaml' => { body => 'own: 1' } } };
my $chan = $t->redis('HGET', 'opamp:agent:{' . uid_text($wu) . '}', 'channel');
my $asub = $t->subscribe($chan);
($s, $d) = api('PUT', 'configs/agents/' . uid_text($wu), $json->encode($own));
is($s, 200, 'PUT an agent config: 200');
is_deeply($asub->(5), [ $chan, 'config ' . uid_text($wu) ],
          'PUBLISH on the agent\'s worker channel');
like($t->s2a_text($ws->recv_msg(5) // ''), qr/key: "own.yaml"/,
     'and the agent receives it');

($s, $d, my $hd) = api('DELETE', 'configs/groups/web-prod');
is($s, 204, 'DELETE a group config: 204');
ok(!$t->redis('EXISTS', 'opamp:config:group:web-prod'), 'gone from Redis');
ok(!defined $t->redis('ZSCORE', 'opamp:groups', 'web-prod'),
   'and from the zset');
($s, $d) = api('DELETE', 'configs/groups/web-prod');
is($s, 404, 'DELETE again: 404');
($s, $d) = api('GET', 'configs/groups/web-prod');
is($s, 404, 'GET a missing config: 404');

# --- commands, messages, offers -------------------------------------------------

($s, $d) = api('POST', 'agents/' . uid_text($wu) . '/restart');
is($s, 202, 'POST restart: 202');
like($t->s2a_text($ws->recv_msg(5) // ''), qr/command \{/,
     'the agent receives the restart command');
($s, $d) = api('POST', 'agents/' . uid_text(random_uid()) . '/restart');
is($s, 404, 'restart for an unknown agent: 404');

($s, $d) = api('POST', 'agents/' . uid_text($wu) . '/messages',
               '{"capability":"io.example.chat","type":"note","data":"hi"}');
is($s, 202, 'POST a custom message: 202');
like($t->s2a_text($ws->recv_msg(5) // ''),
     qr/custom_message \{\s*capability: "io.example.chat"\s*type: "note"\s*data: "hi"/,
     'the agent receives it');

my $cso = OpAMPFleet::encode('ConnectionSettingsOffers',
    'own_metrics { destination_endpoint: "http://127.0.0.1:4318" }');
($s, $d) = api('PUT', 'connection-settings', $cso,
               'Content-Type' => 'application/x-protobuf');
is($s, 200, 'PUT fleet connection settings: 200');
like($t->s2a_text($ws->recv_msg(5) // ''),
     qr/own_metrics \{\s*destination_endpoint: "http:\/\/127.0.0.1:4318"/,
     'pushed to the agent that reports its own metrics');
($s, $d) = api('GET', 'connection-settings');
is($d->{own_metrics}{destination_endpoint}, 'http://127.0.0.1:4318',
   'GET shows them as JSON');

# the same as JSON, in the shape GET shows
($s, $d) = api('PUT', 'connection-settings/agents/' . uid_text($wu),
               '{"own_metrics":{"destination_endpoint":"http://127.0.0.1:9999",'
               . '"headers":{"headers":[{"key":"x-k","value":"v"}]}},'
               . '"other_connections":{"db":{"destination_endpoint":"x"}}}');
is($s, 200, 'PUT an agent\'s connection settings as JSON: 200');
my $stored = $t->redis('GET', 'opamp:connection_settings:{' . uid_text($wu) . '}');
like($t->decode('ConnectionSettingsOffers', $stored),
     qr/own_metrics \{\s*destination_endpoint: "http:\/\/127.0.0.1:9999"\s*headers \{\s*headers \{\s*key: "x-k"/,
     'stored as the protobuf message (protoc decodes it)');
like($t->s2a_text($ws->recv_msg(5) // ''), qr/destination_endpoint: "http:\/\/127.0.0.1:9999"/,
     'and pushed to the agent');
($s, $d) = api('GET', 'connection-settings/agents/' . uid_text($wu));
is($d->{other_connections}{db}{destination_endpoint}, 'x',
   'GET shows maps as objects');
($s, $d) = api('PUT', 'connection-settings', '{"own_metrics":{"color":1}}');
is($s, 400, 'an unknown field: 400');
($s, $d) = api('PUT', 'packages', '{"packages":{"a":{"version":"1"}}}');
is($s, 400, 'packages without all_packages_hash: 400');
like($d->{error}, qr/all_packages_hash/, 'says so');

my $pk = OpAMPFleet::encode('PackagesAvailable',
    'packages { key: "a" value { version: "2" } } all_packages_hash: "\001\002"');
($s, $d) = api('PUT', 'packages/agents/' . uid_text($wu), $pk,
               'Content-Type' => 'application/x-protobuf');
is($s, 200, 'PUT an agent\'s packages: 200');
is($t->redis('HGET', 'opamp:packages:{' . uid_text($wu) . '}', 'hash'),
   '0102', 'stored with its hash in hex');
like($t->s2a_text($ws->recv_msg(5) // ''), qr/packages_available \{/,
     'pushed to the agent');

# --- bad input changes nothing ---------------------------------------------------

my $snap = snapshot();
my @bad = (
    [ 'PUT', 'configs/groups/g1', '{"files": ', 400, qr/invalid JSON/ ],
    [ 'PUT', 'configs/groups/g1', '[1,2]', 400, qr/JSON object/ ],
    [ 'PUT', 'configs/groups/g1', '{"files":{"a":{"body":3}}}', 400,
      qr/body/ ],
    [ 'PUT', 'configs/groups/g1', '{"files":{}}', 400, qr/at least one/ ],
    [ 'PUT', 'configs/groups/g1', '{"files":{"a":{"body":"x"}},"selector":"novalue"}',
      400, qr/invalid selector/ ],
    [ 'PUT', 'configs/groups/g1', '{"files":{"a":{"body":"x"}},"selector":"a=1,,b=2"}',
      400, qr/invalid selector/ ],
    [ 'PUT', 'configs/groups/g1', '{"files":{"a":{"body":"x"}},"selector":"a=1,"}',
      400, qr/invalid selector/ ],
    [ 'PUT', 'configs/groups/g1', '{"files":{"a":{"body":"x"}},"selector":"=v"}',
      400, qr/invalid selector/ ],
    [ 'PUT', 'configs/groups/g1', '{"files":{"a":{"body":"x"}},"priority":"high"}',
      400, qr/priority/ ],
    [ 'PUT', 'configs/groups/g1', '{"files":{"a":{"body":"x"}},"color":1}',
      400, qr/unknown member/ ],
    [ 'PUT', 'configs/groups/bad%20name', '{"files":{"a":{"body":"x"}}}',
      400, qr/invalid group name/ ],
    [ 'PUT', 'configs/agents/' . uid_text($wu), '{"files":{"a":{"body":"x"}},"selector":"a=b"}',
      400, qr/unknown member/ ],
    [ 'PUT', 'configs/groups/g1', '{"files":{"a":{"body":"' . ('x' x 20000) . '"}}}',
      413, undef ],
    [ 'POST', 'agents/' . uid_text($wu) . '/messages', '{"capability":"a"}',
      400, qr/capability/ ],
    [ 'PUT', 'packages', 'not protobuf', 400, qr/PackagesAvailable|protobuf/ ],
    [ 'PUT', 'connection-settings', '{"opamp":{"heartbeat_interval_seconds":"x"}}',
      400, qr/integer/ ],
    [ 'PUT', 'packages', '{"all_packages_hash":"zz"}', 400, qr/hex/ ],
    [ 'PATCH', 'configs/groups/g1', '{}', 405, qr/not allowed/ ],
    [ 'GET', 'agents?limit=5000', undef, 400, qr/limit/ ],
    [ 'GET', 'agents?color=red', undef, 400, qr/unknown parameter/ ],
    [ 'GET', 'nothing/here', undef, 404, qr/no such/ ],
);
for my $b (@bad) {
    my ($meth, $path, $body, $code, $re) = @$b;
    my %h;
    %h = ('Content-Type' => 'application/x-protobuf')
        if ($body // '') eq 'not protobuf';
    my ($st, $dd, $hh, $raw) = api($meth, $path, $body, %h);
    is($st, $code, "$meth $path: $code");
    like($dd->{error} // '', $re, "$meth $path: a JSON error says why")
        if $re;
}
($s, $d, $hd) = api('PATCH', 'agents');
like($hd->{allow} // '', qr/GET/, '405 names the allowed methods');
is_deeply(snapshot(), $snap, 'Redis is unchanged after every bad request');

# --- nginx's own access control ----------------------------------------------------

my ($st) = $t->http_post('', -method => 'GET', -path => '/locked/agents');
is($st, 403, 'deny all protects an admin location');
($st) = $t->http_post('', -method => 'GET', -path => '/basic/agents');
is($st, 401, 'auth_basic: 401 without credentials');
($st, my $bh, my $bb) = $t->http_post('', -method => 'GET',
    -path => '/basic/agents', Authorization => 'Basic YWRtaW46czNjcmV0');
is($st, 200, 'auth_basic: 200 with them');
like($bb, qr/"agents":\[/, 'and the listing');

# --- a config larger than the Redis socket takes at once --------------------

# the command goes out in pieces as the socket drains, and the link goes
# on serving the commands after it
my $huge = 'y' x 6_000_000;
($s, undef, $hd) = $t->http_post('{"files":{"a":{"body":"' . $huge . '"}}}',
                                 -method => 'PUT',
                                 -path => '/big/configs/groups/huge',
                                 'Content-Type' => 'application/json');
is($s, 200, 'a 6 MB config is stored');
is($t->redis("HSTRLEN", "opamp:config:group:huge", "file:a"), 6_000_000,
   'Redis holds all of it');
($s, $d) = api('GET', 'agents');
is($s, 200, 'and the next command is answered');
($s) = api('DELETE', 'configs/groups/huge');
is($s, 204, 'the big config is deleted');

# a body that comes with its headers in one write, larger than nginx's
# header buffer (1k): nginx keeps what it read with the headers and the
# rest in two buffers, and the module takes both (it took the first only,
# and refused the JSON as cut short)
for my $n (900, 3000, 12000) {
    my $body = '{"selector":"size=' . $n . '","priority":1,"files":'
               . '{"big.yaml":{"body":"' . ('x' x $n) . '",'
               . '"content_type":"text/yaml"}}}';
    my ($st, $dd, $hd, $raw) = api('PUT', "configs/groups/size-$n", $body);
    is($st, 200, 'a config of ' . length($body) . ' bytes sent with its '
       . 'headers is taken') or diag($raw);
    my ($st2, $got) = api('GET', "configs/groups/size-$n");
    is(length($got->{files}{'big.yaml'}{body} // ''), $n,
       'whole: its file as sent');
    api('DELETE', "configs/groups/size-$n");
}

# --- Redis down -------------------------------------------------------------------

$t->stop_redis;
($s, $d, $hd) = api('GET', 'agents');
is($s, 503, 'Redis down: 503');
ok($hd->{'retry-after'}, 'with Retry-After');
like($d->{error}, qr/unavailable/, 'and a JSON error');
$t->start_redis;

$ws->close;
$t->done;
done_testing;
