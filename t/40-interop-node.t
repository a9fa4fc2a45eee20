#!/usr/bin/perl

# Interop: @elastic/opamp-client-node (npm), a third-party OpAMP client,
# runs as an agent against the module over plain HTTP.  Its description
# lands in Redis, it receives a group's remote config, applies it, and its
# APPLIED status is recorded.

use strict;
use warnings;

use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";

use OpAMPTest;
use OpAMPFleet;

my $node_dir = "$FindBin::Bin/node";
ok(-d "$node_dir/node_modules/\@elastic/opamp-client-node",
   '@elastic/opamp-client-node is installed (make test runs npm ci)')
    or do { done_testing; exit 1 };

my $t = OpAMPTest->new;
$t->start_redis;
$t->start_nginx('
        location /admin/ { opamp_admin; }', workers => 2);

my %files = ('agent.json' => [ '{"sampling":0.5}', 'application/json' ]);
my $hash = OpAMPFleet::config_hash(%files);
my ($s) = $t->http_post(
    '{"selector":"service.name=opamp-node-interop","files":{"agent.json":'
    . '{"body":"{\\"sampling\\":0.5}","content_type":"application/json"}}}',
    -method => 'PUT', -path => '/admin/configs/groups/interop',
    'Content-Type' => 'application/json');
is($s, 200, 'a group config for the interop agent, set through the admin API');

my $url = 'http://127.0.0.1:' . $t->port . '/v1/opamp';
my $out = `cd $node_dir && timeout 60 node agent.js $url 3 2>&1`;
is($? >> 8, 0, 'the Node.js agent ran') or diag $out;
like($out, qr/^done$/m, 'and finished');

my ($hex) = $out =~ /^uid ([0-9a-f]{32})$/m;
ok($hex, 'it has an instance uid') or diag $out;
$hex //= '0' x 32;
my $uid = pack 'H*', $hex;

my $st = $t->agent($uid);
is($st->{transport}, 'http', 'its state is in Redis, transport http');
my $d = $t->decode('AgentDescription', $st->{description} // '');
like($d, qr/key: "service.name"\s*value \{\s*string_value: "opamp-node-interop"/,
     'with its description (service.name)');
like($d, qr/key: "host.name"\s*value \{\s*string_value: "interop-host"/,
     'and its non-identifying attributes');
cmp_ok($st->{sequence_num} // 0, '>=', 2, 'after several exchanges');

like($out, qr/^config agent.json "\{\\"sampling\\":0.5\}"$/m,
     'the client received the remote config of its group');
is($st->{config_status}, 'APPLIED', 'and its APPLIED status is recorded');
is($st->{config_hash}, $hash, 'for the config it was sent');

my ($as, $ah, $ab) = $t->http_post('', -method => 'GET',
    -path => "/admin/agents?config_status=APPLIED&attr=service.name%3Dopamp-node-interop");
like($ab, qr/"instance_uid":"\Q${\ uid_text($uid)}\E"/,
     'the admin API lists it among the agents that APPLIED the config');

$t->done;
done_testing;
