#!/usr/bin/perl

# The inventory's recount (docs/redis-schema.md, <prefix>fleet:inventory):
# each sweep step recomputes the inventory part of a window of agents from
# what their hashes and status strings keep, as it does for the fleet
# gauges, so that a direct write the scripts did not see (a status string
# with another service.version, a config_hash written into an agent hash)
# is counted right after some sweeps, and an inventory deleted with its
# component lists and every agent's inv_* fields is counted again from
# nothing, components and all.

use strict;
use warnings;

use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use JSON::PP;

use OpAMPTest;
use OpAMPCollector;

my $P = 'opamp:';

# retention 2 s: a sweep step (and its recount window) every second; the
# agents stay (opamp_agent_timeout 90 s, they are live)
my $t = OpAMPTest->new;
$t->start_redis;
$t->start_nginx('
        location /admin/ { opamp_admin; }',
    http => 'opamp_agent_retention 2s;');

sub collector_text {
    my (%o) = @_;
    my $text = OpAMPCollector::full_status(uid => $o{uid}, seq => 0,
                                           host => $o{host},
                                           build => $o{build});
    $text =~ s/string_value: "0\.114\.0"/string_value: "$o{version}"/;
    return $text;
}

my @uids;
for my $i (1 .. 3) {
    my $u = random_uid();
    push @uids, $u;
    my ($s) = $t->http_post($t->a2s(collector_text(
        uid => $u, host => "inv-$i", build => $i == 3 ? 2 : 1,
        version => $i == 1 ? '0.113.0' : '0.114.0')));
    is($s, 200, "agent $i reports");
}

sub inventory {
    my ($st, undef, $b) = $t->http_post('', -method => 'GET',
                                        -path => '/admin/fleet',
                                        'Content-Type' => undef);
    die "GET fleet: $st\n" unless ($st // 0) == 200;
    return decode_json($b)->{inventory};
}

my $inv = inventory();
is($inv->{'version:0.114.0'}, 2, 'the inventory as the agents reported');
is($inv->{'version:0.113.0'}, 1, '... each version');
is($inv->{'component:receivers/rece001'}, 3, '... and components');

# direct writes, which no script sees: agent 2's status string now says
# service.version 7.777.7 (as long as 0.114.0: the protobuf lengths
# stand), agent 3's hash a config hash
my $skey = $t->status_key($uids[1]);
my $s2 = $t->redis('GET', $skey);
ok($s2 =~ s/0\.114\.0/7.777.7/, "agent 2's stored description rewritten");
$t->redis('SET', $skey, $s2);
my $hash = 'cd' x 32;
$t->redis('HSET', $t->agent_key($uids[2]), 'config_hash', $hash);
is(inventory()->{'version:7.777.7'}, undef,
   'not counted at once: the scripts did not see the writes');

ok($t->wait_for(sub {
    my $i = inventory();
    ($i->{'version:7.777.7'} // 0) == 1 && ($i->{"config:$hash"} // 0) == 1
}, 30), 'the sweep\'s recount counts both direct writes');
$inv = inventory();
is($inv->{'version:0.114.0'}, 1, '... and takes agent 2 off its old version');
is($inv->{'version:0.113.0'}, 1, '... leaves the others as they were');
is($inv->{'component:receivers/rece001'}, 3, '... components too');

# from nothing: the inventory, its lists and every agent's part deleted
my %before = %$inv;
$t->redis('DEL', "${P}fleet:inventory", "${P}fleet:inventory:lists");
$t->redis('HDEL', $t->agent_key($_), qw(inv_version inv_os inv_config
                                        inv_components)) for @uids;
is_deeply(inventory(), {}, 'an inventory deleted by hand is empty');
ok($t->wait_for(sub {
    my $i = inventory();
    keys %$i == keys %before
}, 30), 'the recount counts every agent again');
is_deeply(inventory(), \%before,
          '... to the inventory it was, components and all');
is($t->redis('HLEN', "${P}fleet:inventory:lists"), 4,
   '... the two component lists kept again with their counts');
my $h1 = $t->hgetall($t->agent_key($uids[0]));
is($h1->{inv_version}, '0.113.0', "... an agent's inv_version again");

# a recount step that finds nothing to move writes nothing: the
# inventory stays as it is over further sweeps
sleep 3;
is_deeply(inventory(), \%before, 'further sweeps leave it as it is');

$t->done;
done_testing;
