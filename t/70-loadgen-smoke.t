#!/usr/bin/perl

# A tiny run of the benchmark's load generator (bench/loadgen), so that it
# keeps working: no benchmark figures here, only that its agents are
# served.

use strict;
use warnings;

use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";

use OpAMPTest;

my $bench = "$FindBin::Bin/../bench";
my $out = `make -s -C $bench loadgen 2>&1`;
is($?, 0, 'bench/loadgen builds') or diag $out;

my $t = OpAMPTest->new;
$t->start_redis;
$t->start_nginx('
        location /admin/ { opamp_admin; }', workers => 2);

my $lg = "$bench/loadgen --port " . $t->port;

$out = `$lg --mode hold --agents 50 --duration 3 --heartbeat 1`;
like($out, qr/reported=50 failed=0/, 'hold: 50 agents connect and report');
like($out, qr/closed_by_peer=0/, 'and stay connected');
is($t->redis('ZCARD', 'opamp:agents'), 50, 'all 50 are in Redis');

$out = `$lg --mode http --agents 4 --duration 1`;
my ($rate) = $out =~ /rate=(\d+)/;
ok(($rate // 0) > 0, 'http: heartbeats answered');
like($out, qr/failed=0/, 'none failed');

$out = `$lg --mode reconnect --agents 20 --duration 20`;
like($out, qr/back=20 .*full_state_asked=0 failed=0/,
     'reconnect: all back, none asked for full state');

$out = `$lg --mode fanout --agents 20 --duration 20 --trigger "curl -s -o /dev/null -X PUT http://127.0.0.1:${\ $t->port}/admin/configs/groups/b -d '{\\"selector\\":\\"service.name=bench\\",\\"files\\":{\\"a\\":{\\"body\\":\\"x\\"}}}'"`;
like($out, qr/received=20 /, 'fanout: every agent receives the config');

$t->done;
done_testing;
