#!/usr/bin/perl

# Interop: @elastic/opamp-client-node (npm), a third-party OpAMP client,
# runs as an agent against the module over plain HTTP (t/node/agent.js).
# Its description and health land in Redis; it receives the remote config
# of a group written straight into Redis as docs/redis-schema.md says,
# applies it, and its APPLIED status is recorded.
#
# Plain HTTP only: the client (0.5.0, pinned in t/node/package.json) has
# no WebSocket transport (its README: "Only supports HTTP transport (no
# WebSocket transport)"), so there is no WebSocket run.
#
# t/node/node_modules must be there (make test runs npm ci first): without
# it this test fails, it does not skip.

use strict;
use warnings;

use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use Digest::SHA qw(sha256_hex);
use Time::HiRes qw(time);

use OpAMPTest;

my $node_dir = "$FindBin::Bin/node";

my $node = `node --version 2>&1`;
chomp $node;
ok($? == 0 && $node =~ /^v\d+/, "node is installed ($node)")
    or do { done_testing; exit 1 };
ok(-f "$node_dir/node_modules/\@elastic/opamp-client-node/package.json",
   '@elastic/opamp-client-node is installed in t/node/node_modules '
   . '(make test runs npm ci)')
    or do { done_testing; exit 1 };

my $t = OpAMPTest->new;
$t->start_redis;
$t->start_nginx('', workers => 2);

# a group config for the interop agent, written as redis-schema.md says
my ($name, $type, $cbody) = ('agent.json', 'application/json',
                             '{"sampling":0.5}');
my $hash = sha256_hex(pack('N', length $name) . $name
                      . pack('N', length $type) . $type
                      . pack('Q>', length $cbody) . $cbody);
$t->redis('MULTI');
$t->redis('HSET', 'opamp:config:group:interop',
          'selector', 'service.name=opamp-node-interop', 'priority', 10,
          'hash', $hash, 'updated_ms', int(time * 1000),
          "file:$name", $cbody, "type:$name", $type);
$t->redis('ZADD', 'opamp:groups', 10, 'interop');
$t->redis('INCR', 'opamp:config_version');
my $exec = $t->redis('EXEC');
is(ref $exec, 'ARRAY', 'a group config written into Redis');

my $url = 'http://127.0.0.1:' . $t->port . '/v1/opamp';
my $started = time;
my $out = `cd $node_dir && timeout 60 node agent.js $url 4 30 2>&1`;
my $rc = $? >> 8;
is($rc, 0, 'the Node.js agent ran and exited 0') or diag $out;
like($out, qr/^done$/m, 'it finished') or diag $out;
ok(time - $started < 30, 'within 30 s');
my ($exchanges) = $out =~ /^exchanges (\d+)$/m;
cmp_ok($exchanges // 0, '>=', 2, 'at least 2 exchanges with the server');
unlike($out, qr/send failed/, 'no failed exchange') or diag $out;

my @uids = $out =~ /^uid ([0-9a-f]{32})$/mg;
ok(@uids, 'it printed its instance uid') or diag $out;
my $uid = pack 'H*', ($uids[-1] // '0' x 32);
diag('agent ' . uid_text($uid)) if $ENV{TEST_VERBOSE};

my $st = $t->agent($uid);
is($st->{schema}, 3, 'its hash is in Redis');
is($st->{transport}, 'http', 'transport http');
cmp_ok($st->{sequence_num} // 0, '>=', 2, 'sequence_num after several '
       . 'exchanges: ' . ($st->{sequence_num} // 'none'));
ok(defined $t->redis('ZSCORE', 'opamp:agents', uid_text($uid)),
   'listed in opamp:agents');

my $caps = $st->{capabilities} // 0;
is($caps & 0x1, 0x1, 'capabilities: ReportsStatus');
is($caps & 0x2, 0x2, 'capabilities: AcceptsRemoteConfig');
is($caps & 0x800, 0x800, 'capabilities: ReportsHealth');

my $d = eval { $t->parse('AgentDescription', $st->{description} // '') }
        // {};
my %ident = map { $_->{key} => $_->{value} }
            @{ $d->{identifying_attributes} // [] };
my %other = map { $_->{key} => $_->{value} }
            @{ $d->{non_identifying_attributes} // [] };
is($ident{'service.name'}{string_value}, 'opamp-node-interop',
   'description (decoded by protoc): service.name opamp-node-interop');
is($ident{'service.version'}{string_value}, '1.0.0',
   'description: service.version');
is($other{'host.name'}{string_value}, 'interop-host',
   'description: non-identifying host.name');
like($t->decode('AgentDescription', $st->{description} // ''),
     qr/key: "service.name"\s*value \{\s*string_value: "opamp-node-interop"/,
     'description, protoc text format');

is($st->{healthy}, 1, 'healthy 1');
my $hl = eval { $t->parse('ComponentHealth', $st->{health} // '') } // {};
is($hl->{healthy}, 'true', 'health: healthy true');
is($hl->{status}, 'ok', 'health: status "ok"');

like($out, qr/^config agent\.json "\{\\"sampling\\":0\.5\}"$/m,
     'the client received its group\'s remote config');
is($st->{desired_config}, 'group:interop', 'desired_config group:interop');
is($st->{config_status}, 'APPLIED', 'its APPLIED status is recorded');
is($st->{config_hash}, $hash, 'for the config it was sent');

# every exchange of the client was answered 200
open my $al, '<', $t->dir . '/logs/access.log' or die;
my @posts = grep { m{"POST /v1/opamp } } <$al>;
close $al;
cmp_ok(scalar @posts, '>=', $exchanges // 2, 'its POSTs are in access.log');
is(scalar(grep { !m{"POST /v1/opamp HTTP/1\.1" 200 } } @posts), 0,
   'all answered 200') or diag(join '', @posts);

$t->done;
done_testing;
