#!/usr/bin/perl

# Fleet gauges (docs/metrics.md "Fleet gauges", docs/redis-schema.md
# <prefix>fleet:gauges): kept by the scripts on transitions, read by a
# scrape in a few Redis steps; after a mixed run of 1,000 agents over two
# nginx instances (running their config, failing it, applying it, owed
# none, unhealthy, over both transports, some disconnecting, some expiring,
# some swept, one changed by a direct write the scripts did not see) they
# equal a recount of the agent hashes, on both instances.

use strict;
use warnings;

use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use JSON::PP;
use Time::HiRes qw(time sleep);

use OpAMPTest;
use OpAMPFleet;

my $P = 'opamp:';

# retention 2 s: the sweep (and its recount window of 100 agents) every
# second; the agents stay, live (opamp_agent_timeout 90s)
my $http = 'opamp_agent_retention 2s;';
my $server = '
        location = /metrics { opamp_metrics; }
        location /admin/ { opamp_admin; }';

my $ta = OpAMPTest->new;
$ta->start_redis;
# a replica, where a failover would go
my $tr = OpAMPTest->new;
$tr->start_redis('--replicaof', '127.0.0.1', $ta->redis_port);
my $tb = OpAMPTest->new(redis_port => $ta->redis_port);
$ta->start_nginx($server, workers => 2, http => "$http opamp_server_id a;");
$tb->start_nginx($server, workers => 2, http => "$http opamp_server_id b;");

sub scrape {
    my ($t) = @_;
    my ($st, $h, $b) = $t->http_post('', -method => 'GET',
                                     -path => '/metrics');
    die "scrape: $st\n" unless ($st // 0) == 200;
    my %m;
    for (split /\n/, $b) {
        next if /^#/;
        my ($k, $v) = /^(opamp_fleet_\S+) (-?\d+)$/ or next;
        $m{$k} = $v;
    }
    return \%m;
}

# a group config for service.name=web
my $files = { 'c.yaml' => { body => "receivers: {}\n" } };
my ($as) = $ta->http_post(encode_json({ files => $files,
                                        selector => 'service.name=web' }),
                          -method => 'PUT', -path => '/admin/configs/groups/web',
                          'Content-Type' => 'application/json');
is($as, 200, 'a group config');
my $hash = pack 'H*', OpAMPFleet::config_hash('c.yaml' => [ "receivers: {}\n" ]);
my $hesc = uid_escape($hash);

my $DESC_WEB = 'agent_description { identifying_attributes { '
    . 'key: "service.name" value { string_value: "web" } } }';
my $DESC_OTHER = 'agent_description { identifying_attributes { '
    . 'key: "service.name" value { string_value: "db" } } }';

my %tpl = (
    web => OpAMPFleet::template("sequence_num: 0 capabilities: 0x1003 "
                                . "health { healthy: true } $DESC_WEB"),
    sick => OpAMPFleet::template("sequence_num: 0 capabilities: 0x1003 "
                                 . "health { healthy: false } $DESC_WEB"),
    other => OpAMPFleet::template("sequence_num: 0 capabilities: 0x1003 "
                                  . "$DESC_OTHER"),
);
my %status = map {
    $_ => OpAMPFleet::template('sequence_num: 1 capabilities: 0x1003 '
        . "remote_config_status { last_remote_config_hash: \"$hesc\" "
        . "status: RemoteConfigStatuses_$_ }")
} qw(APPLIED FAILED APPLYING);
# APPLIED, but for another config (an older one, say)
$status{STALE} = OpAMPFleet::template('sequence_num: 1 capabilities: 0x1003 '
    . 'remote_config_status { last_remote_config_hash: "'
    . uid_escape(pack 'H*', 'ab' x 32) . '" '
    . 'status: RemoteConfigStatuses_APPLIED }');

# 1,000 HTTP agents, alternately through each instance:
#   0-379 web, APPLIED; 380-399 web, APPLIED for another config;
#   400-499 web, FAILED; 500-549 web, APPLYING;
#   550-599 web, unhealthy, nothing reported of the config;
#   600-999 other (owed no config)
my @uids;
for my $i (0 .. 999) {
    my $u = random_uid;
    push @uids, $u;
    my $t = $i % 2 ? $tb : $ta;
    my $kind = $i < 550 ? 'web' : $i < 600 ? 'sick' : 'other';
    my ($st) = $t->http_post(OpAMPFleet::with_uid($tpl{$kind}, $u));
    die "report $i: $st\n" unless ($st // 0) == 200;
    my $s = $i < 380 ? 'APPLIED' : $i < 400 ? 'STALE' : $i < 500 ? 'FAILED'
          : $i < 550 ? 'APPLYING' : undef;
    next unless $s;
    ($st) = $t->http_post(OpAMPFleet::with_uid($status{$s}, $u));
    die "status $i: $st\n" unless ($st // 0) == 200;
}

# 40 WebSocket agents of the web group; half of them leave
my @ws;
for my $i (0 .. 39) {
    my $t = $i % 2 ? $tb : $ta;
    my $c = OpAMPFleet->connect_ws(port => $t->port);
    $c->send_msg(OpAMPFleet::with_uid($tpl{web}, random_uid));
    defined $c->recv_msg(5) or die "no answer to WebSocket agent $i\n";
    push @ws, $c;
}
$_->close for @ws[0 .. 19];

my $m = scrape($ta);
is($m->{opamp_fleet_agents}, 1040, 'agents: 1,040 known');
is($m->{'opamp_fleet_agents_by_transport{transport="http"}'}, 1000,
   'by transport: 1,000 HTTP');
is($m->{'opamp_fleet_agents_by_transport{transport="websocket"}'}, 40,
   'and 40 WebSocket (those that left are still known)');
is($m->{'opamp_fleet_agents_by_owed_config{state="running"}'}, 380,
   'running their owed config: the 380 that applied it');
is($m->{'opamp_fleet_agents_by_config_status{status="APPLIED"}'}, 400,
   'APPLIED: 400 (20 of them for another config)');
is($m->{'opamp_fleet_agents_by_config_status{status="FAILED"}'}, 100,
   '100 FAILED');
is($m->{'opamp_fleet_agents_by_config_status{status="APPLYING"}'}, 50,
   '50 APPLYING');
is($m->{'opamp_fleet_agents_by_health{health="unhealthy"}'}, 50,
   '50 unhealthy');
is($m->{'opamp_fleet_group_agents{group="web"}'}, 640,
   'the web group: 600 + 40 agents');
is($m->{'opamp_fleet_group_agents_failed{group="web"}'}, 100,
   'of which 100 failed');
is($m->{'opamp_fleet_group_agents_not_running{group="web"}'}, 260,
   'and 260 do not run its config (another config, failed, applying, '
   . 'silent, WebSocket)');

# some expire: their index score (last seen) before the timeout
my $old = int(time * 1000) - 100_000;
$ta->redis('ZADD', "${P}agents", $old, uid_text($_)) for @uids[600 .. 629];
$m = scrape($ta);
is($m->{opamp_fleet_agents_live}, 1010,
   'live: the 30 not seen within opamp_agent_timeout are not');

# some are swept: departed long ago
for my $u (@uids[630 .. 679]) {
    my $k = $ta->agent_key($u);
    $ta->redis('HSET', $k, 'last_seen_ms', 1000, 'expires_ms', 2000);
    $ta->redis('ZADD', "${P}agents", 1000, uid_text($u));
}
ok($ta->wait_for(sub { scrape($ta)->{opamp_fleet_agents} == 970 }, 20),
   'the sweep removes 50 departed agents and the 20 WebSocket agents that '
   . 'left more than the retention ago');

# a direct write that bypasses the scripts: the sweep's recount window
# (100 agents a step) finds it
$ta->redis('HSET', $ta->agent_key($uids[0]), 'healthy', '0');
ok($ta->wait_for(sub {
    scrape($ta)->{'opamp_fleet_agents_by_health{health="unhealthy"}'} == 51
}, 40), 'a direct write to an agent hash is counted after the recount');

# the recount of the test: every agent hash, as docs/redis-schema.md says
# (with $versions, also the counts by the version each agent of a group is
# owed, which the gauges hash keeps for staged rollouts and the scrape
# does not show)
sub recount {
    my ($r, $versions) = @_;
    $r //= $ta;
    my %c;
    my $keys = $r->redis('KEYS', "${P}agent:*");
    for my $k (@$keys) {
        my $h = $r->hgetall($k);
        $c{agents}++;
        $c{"transport:$h->{transport}"}++;
        my $health = !defined $h->{healthy} ? 'unknown'
                   : $h->{healthy} eq '1' ? 'healthy' : 'unhealthy';
        $c{"health:$health"}++;
        my $st = $h->{config_status} // '';
        $st = 'UNSET' unless $st =~ /^(APPLIED|APPLYING|FAILED)$/;
        $c{"status:$st"}++;
        my $owed = ($h->{desired_hash} // '') eq '' ? 'none'
            : ($st eq 'APPLIED'
               && ($h->{config_hash} // '') eq $h->{desired_hash})
              ? 'running' : 'not_running';
        $c{"owed:$owed"}++;
        if (($h->{desired_config} // '') =~ /^group:(.*)$/) {
            $c{"group:$1"}++;
            $c{"group_failed:$1"}++ if $st eq 'FAILED';
            $c{"group_not_running:$1"}++ if $owed eq 'not_running';
            if ($versions && ($h->{desired_hash} // '') ne '') {
                my $v = "$1\@" . substr($h->{desired_hash}, 0, 16);
                $c{"version:$v"}++;
                $c{"version_running:$v"}++ if $owed eq 'running';
                $c{"version_unhealthy:$v"}++
                    if ($h->{healthy} // '') eq '0';
                $c{"version_disconnected:$v"}++
                    if ($h->{connected} // '') eq '0';
                $c{"version_failed:$v"}++
                    if ($h->{failed_hash} // '') eq $h->{desired_hash};
            }
        }
    }
    return \%c;
}

# scraped as the test's own recount sees them
sub gauges {
    my ($t) = @_;
    my $got = scrape($t);
    my %g = (agents => $got->{opamp_fleet_agents});
    for my $k (keys %$got) {
        if ($k =~ /^opamp_fleet_agents_by_(\w+)\{\w+="(\w+)"\}$/) {
            my $d = { transport => 'transport', health => 'health',
                      config_status => 'status',
                      owed_config => 'owed' }->{$1};
            $g{"$d:$2"} = $got->{$k} if $got->{$k};
        } elsif ($k =~ /^opamp_fleet_group_agents(_failed|_not_running)?\{group="(.*)"\}$/) {
            $g{'group' . ($1 // '') . ":$2"} = $got->{$k} if $got->{$k};
        }
    }
    return \%g;
}

# nothing moves now (no agent sends, the sweep has nothing left to take)
my $want = recount();
for my $t ($ta, $tb) {
    is_deeply(gauges($t), $want, 'the gauges equal a recount of the agent '
              . 'hashes (' . ($t == $ta ? 'first' : 'second') . ' instance)')
        or diag(explain { got => gauges($t), want => $want });
}

# the replica, where a Sentinel failover would take the fleet: the gauges
# travel with the agent hashes in the same script calls, so they agree
# there too
ok($ta->replicas_caught_up, 'the replica has every write');
{
    my $g = $tr->hgetall("${P}fleet:gauges");
    my %g = map { $_ => $g->{$_} } grep { $g->{$_} } keys %$g;
    my $want_r = recount($tr, 1);
    is_deeply(\%g, $want_r, 'on the replica, the gauges hash equals a '
              . 'recount of its agent hashes')
        or diag(explain { got => \%g, want => $want_r });
}

# a group deleted: its connected WebSocket agents leave it at once (the
# fan-out's check), a plain HTTP agent at its next poll
is(gauges($ta)->{'group:web'}, 620, 'the web group: 600 HTTP and 20 '
   . 'WebSocket agents');
$ta->http_post('', -method => 'DELETE', -path => '/admin/configs/groups/web');
ok($ta->wait_for(sub { (gauges($ta)->{'group:web'} // 0) == 600 }, 10),
   'deleted: the 20 WebSocket agents leave it');
my ($st) = $ta->http_post(OpAMPFleet::with_uid(
    OpAMPFleet::template('sequence_num: 2 capabilities: 0x1003'), $uids[1]));
is($st, 200, 'an HTTP agent of the group polls');
is(gauges($ta)->{'group:web'}, 599, 'and leaves it');
is_deeply(gauges($tb), recount(), 'the gauges still equal a recount');
$_->close for @ws[20 .. 39];

$tb->done;
$ta->done;
$tr->stop_redis;
done_testing;
