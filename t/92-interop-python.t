#!/usr/bin/perl

# Interop: the OpenTelemetry Python OpAMP client (opentelemetry-opamp-client
# from PyPI, pinned in t/interop/python/requirements.txt, installed by
# `make interop-tools` into the venv build/interop/venv), plain HTTP (its
# only transport), in a small agent of ours (t/interop/python/agent.py):
#
# * its description lands in Redis, with its capabilities;
# * a group config PUT through the admin API reaches it, it applies it and
#   its APPLIED status is recorded with the config's hash;
# * its heartbeats are answered, in sequence;
# * when the server loses its sequence, the client is asked for its full
#   state (once), sends it with the effective config of the applied
#   config, and a message that carries the full status is never answered
#   with ReportFullState (the client builds a heartbeat when it queues
#   it, so its full-state message can carry the number of a heartbeat
#   that went first: out of sequence, and taken as it is);
# * it stops with AgentDisconnect: marked disconnected.
#
# Skips (saying so) only on a machine without python3-venv; see
# t/lib/OpAMPInterop.pm.

use strict;
use warnings;

use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use JSON::PP;

use OpAMPTest;
use OpAMPInterop;

my $python = OpAMPInterop::need(OpAMPInterop::root()
                                . '/build/interop/venv/bin/python',
                                'python');
my $script = OpAMPInterop::root() . '/t/interop/python/agent.py';

my $t = OpAMPTest->new;
$t->start_redis;
$t->start_nginx('
        location /admin/ {
            opamp_admin;
        }', workers => 2);

my $json = JSON::PP->new->canonical;

sub api {
    my ($method, $path, $body) = @_;
    my ($s, undef, $b) = $t->http_post($body // '', -method => $method,
                                       -path => "/admin/$path",
                                       'Content-Type' => 'application/json');
    return ($s, eval { $json->decode($b) });
}

my $name = 'python-interop';
my ($s, $r) = api('PUT', "configs/groups/$name", $json->encode({
    selector => "service.name=$name",
    files => { 'config.json' => { body => '{"sampling": 0.25}',
                                  content_type => 'application/json' } } }));
is($s, 200, 'a group config through the admin API');
my $hash = $r->{config_hash};

my $p = OpAMPInterop->spawn([ $python, $script,
                              'http://127.0.0.1:' . $t->port . '/v1/opamp',
                              $name, '0.3' ],
                            log => $t->dir . '/logs/python.log');
ok($p->expect(qr/^connected$/, 20), 'the client connected');
my ($got, $body) = $p->expect(qr/^config ([0-9a-f]+) config\.json (.*)$/,
                              10);
is($got, $hash, 'it received the group config');
is($body, '"{\"sampling\": 0.25}"', 'with its body');
ok($p->expect(qr/^applied \Q$hash\E$/, 5), 'and applied it');

my $uid;
ok($t->wait_for(sub {
    my ($s, $d) = api('GET', "agents?attr=service.name=$name");
    $uid = $d->{agents}[0]{instance_uid} if $d && @{ $d->{agents} // [] };
    defined $uid;
}, 10), 'found in the admin API by its service.name');
my $key = "opamp:agent:{$uid}";
(my $uid_hex = $uid) =~ s/-//g;
my $ubytes = pack 'H*', $uid_hex;
my $uid_bytes = pack 'H*', $uid =~ s/-//gr;
ok($t->wait_for(sub {
    my $x = $t->hgetall($key);
    ($x->{config_status} // '') eq 'APPLIED'
        && ($x->{config_hash} // '') eq $hash;
}, 10), 'APPLIED with the config\'s hash in Redis');

my $st = $t->agent($ubytes);
is($st->{transport}, 'http', 'transport http');
is($st->{capabilities}, 0x1 | 0x2 | 0x4 | 0x1000 | 0x2000,
   'its capabilities (the client\'s defaults)');
my $d = eval { $t->parse('AgentDescription', $st->{description}) } // {};
my %attr = map { $_->{key} => $_->{value}{string_value} }
           @{ $d->{identifying_attributes} // [] },
           @{ $d->{non_identifying_attributes} // [] };
is($attr{'service.name'}, $name, 'description: service.name');
is($attr{'service.version'}, '2.0.0', 'description: service.version');
is($attr{'host.name'}, 'python-host', 'description: host.name');

# heartbeats every 0.3 s
my $seq0 = $st->{sequence_num};
ok($t->wait_for(sub { $t->hgetall($key)->{sequence_num} >= $seq0 + 5 },
                10), 'it heartbeats, answered by the server');
my @ex = map { [ split / / ] } grep { /^exchange / } $p->lines;
is(scalar(grep { $_->[2] & 1 } @ex), 0, 'in sequence: never asked for its '
   . 'full state') or diag(join "\n", map { "@$_" } @ex);
ok(!$t->agent($ubytes)->{effective_config}, 'its effective config is not in Redis yet '
   . '(the client sends it in full-state messages only)');

# the server loses the agent's sequence (as after Redis lost data): the
# next heartbeat is out of sequence, the client is asked for its full
# state, and sends it, with the effective config of the applied config
my $n0 = () = $p->lines;
$t->redis('HSET', $key, 'sequence_num', 1000000);
ok($t->wait_for(sub {
    my $x = $t->agent($uid_bytes);
    $x->{effective_config} && $x->{sequence_num} < 1000000;
}, 10), 'out of sequence: the client sent its full state');
my $e = eval { $t->parse('EffectiveConfig',
                         $t->agent($uid_bytes)->{effective_config}) } // {};
is($e->{config_map}{config_map}{'config.json'}{body}, '{"sampling": 0.25}',
   'its effective config holds the applied config');
my $seq1 = $t->hgetall($key)->{sequence_num};
ok($t->wait_for(sub { $t->hgetall($key)->{sequence_num} >= $seq1 + 5 },
                10), 'it heartbeats on');
my @all = $p->lines;
@ex = map { [ split / / ] } grep { /^exchange / } @all[ $n0 .. $#all ];
my @asked = grep { $_->[2] & 1 } @ex;
cmp_ok(scalar @asked, '>=', 1, 'the server asked for the full state');
is(scalar(grep { ($_->[2] & 1) && $_->[3] =~ /d/ } @ex), 0,
   'a message that carried the full status was never answered with '
   . 'ReportFullState') or diag(join "\n", map { "@$_" } @ex);
cmp_ok(scalar @asked, '<=', 2, 'asked once (twice when a heartbeat '
       . 'crossed)') or diag(join "\n", map { "@$_" } @ex);
is($p->count(qr/^config /), 1, 'the config was sent once');
is(scalar(grep { /^error/ } $p->lines), 0, 'no error response');

$p->send('stop');
ok($p->expect(qr/^stopped$/, 15), 'the client stopped');
ok($t->wait_for(sub { ($t->hgetall($key)->{connected} // '') eq '0' }, 10),
   'its AgentDisconnect marked it disconnected');
$p->stop;

$t->done;
done_testing;
