#!/usr/bin/perl

# A config an agent reported FAILED is not offered to it again
# (docs/redis-schema.md, "failed_hash"; docs/admin-api.md, "retry-config"):
# not when opamp_agent_timeout has passed since the offer, not when the
# agent connects again, not at a fleet change that leaves the config's hash
# as it was (decided by the worker, src/ngx_http_opamp_fanout.c); it is
# offered when the hash changes and when an operator retries.  An agent
# that applied its previous config after failing the new one shows as
# rolled back.  Each "not offered" is proven by a control agent that is
# offered the same config on the same path at the same time, and by a
# barrier message that comes after anything the step sends (as t/63).

use strict;
use warnings;

use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use Time::HiRes qw(time sleep);
use JSON::PP;

use OpAMPTest;
use OpAMPFleet;

my $P = 'opamp:';
# opamp_agent_timeout, seconds: long enough that the agents the test does
# not read while it waits on another (a barrier, up to seconds on a loaded
# machine) are not closed as silent
my $TIMEOUT = 5;

# a connection nginx closed is a failed check here, not a death by signal
$SIG{PIPE} = 'IGNORE';

my $t = OpAMPTest->new;
$t->start_redis;
# one worker: an agent that closes its connection and connects again may
# land on the other worker of two, and a custom message queued for it
# right then (this test's barrier) can wait for its next message (1 run
# in 4 stalled so; the code before this session too): a race of its own,
# not what this test is about
$t->start_nginx('
        location /admin/ { opamp_admin; }', workers => 1,
    http => "opamp_heartbeat_interval 1s;\n"
            . "    opamp_agent_timeout ${TIMEOUT}s;");

sub template_for {
    my ($service) = @_;
    return OpAMPFleet::template(
        'sequence_num: 0 capabilities: 3 agent_description { '
        . 'identifying_attributes { key: "service.name" '
        . "value { string_value: \"$service\" } } } "
        . 'custom_capabilities { capabilities: "io.example.barrier" }');
}

sub _unescape { return OpAMPTest::_unescape(@_) }

sub hash_of {
    my ($body) = @_;
    return OpAMPFleet::config_hash('c.yaml' => [ $body, '' ]);
}

# the config hashes a ServerToAgent offers ('' for none)
sub offered_in {
    my ($m) = @_;
    my $text = OpAMPFleet::decode('ServerToAgent', $m);
    my ($h) = $text =~ /config_hash: "((?:[^"\\]|\\.)*)"/;
    return (defined $h ? unpack('H*', _unescape($h)) : '', $text);
}

my (%agents, %seen);

sub connect_agent {
    my ($name, $service, $uid) = @_;
    my $ag = OpAMPFleet->connect_ws(port => $t->port);
    $ag->{uid} = $uid // OpAMPFleet::random_uid();
    $ag->{seq} = 0;
    $agents{$name} = $ag;
    return $ag;
}

# sends one AgentToServer of the agent with the next sequence number
sub say_ {
    my ($name, $text) = @_;
    my $ag = $agents{$name};
    $ag->{seq}++;
    $ag->send_msg(OpAMPFleet::encode('AgentToServer',
        'instance_uid: "' . OpAMPFleet::uid_escape($ag->{uid})
        . "\" sequence_num: $ag->{seq} capabilities: 3 " . ($text // '')));
}

sub status {
    my ($name, $st, $hex) = @_;
    say_($name, 'remote_config_status { last_remote_config_hash: "'
         . OpAMPFleet::uid_escape(pack 'H*', $hex)
         . "\" status: RemoteConfigStatuses_$st"
         . ($st eq 'FAILED' ? ' error_message: "bad config"' : '') . ' }');
}

# every message an agent received since the last look, its config hashes
# noted in %seen
sub seen_in {
    my ($name, $m) = @_;
    my ($h) = offered_in($m);
    push @{ $seen{$name} }, $h if $h ne '';
}

# the config hashes each agent received since the last call, up to a
# barrier: a custom message queued for every agent and a fleet-wide
# PUBLISH config reach each agent through the same path as an offer of a
# change or a check (its worker's pub/sub connection, a check call, the
# answer in order), so whatever the step sends an agent arrives first
my $barrier = 0;

sub received {
    $barrier++;
    for my $name (sort keys %agents) {
        $t->redis('RPUSH', $P . 'outbox:{'
                  . OpAMPFleet::uid_text($agents{$name}{uid}) . '}',
                  "io.example.barrier\nb\n$barrier");
    }
    $t->redis('PUBLISH', "${P}fleet", 'config');
    my %got;
    for my $name (sort keys %agents) {
        for (1 .. 30) {
            my $m = $agents{$name}->recv_msg(10);
            last unless defined $m;
            seen_in($name, $m);
            last if (offered_in($m))[-1] =~ /data: "\Q$barrier\E"/;
        }
        $got{$name} = join ',', @{ delete $seen{$name} // [] };
    }
    return \%got;
}

# keeps every agent alive for $secs (a heartbeat every 0.4 s), noting
# what they receive meanwhile
sub pump {
    my ($secs) = @_;
    my $end = time + $secs;
    while (time < $end) {
        say_($_) for sort keys %agents;
        my $until = time + 0.4;
        while ((my $left = $until - time) > 0) {
            for my $name (sort keys %agents) {
                my $m = $agents{$name}->recv_msg($left / 4);
                seen_in($name, $m) if defined $m;
            }
        }
    }
}

sub field {
    my ($name, $f) = @_;
    return $t->redis('HGET', $P . 'agent:{'
                     . OpAMPFleet::uid_text($agents{$name}{uid}) . '}', $f)
           // '';
}

sub api {
    my ($method, $path, $json) = @_;
    my ($st, $h, $body) = $t->http_post($json // '', -method => $method,
        -path => "/admin/$path", 'Content-Type' => 'application/json');
    my $d = eval { decode_json($body) };
    return ($st, $d, $body);
}

sub put {
    my ($path, $json) = @_;
    my ($st, undef, $body) = api('PUT', "configs/$path", $json);
    is($st, 200, "PUT $path") or diag $body;
}

sub edge { return '{"selector":"service.name=edge","priority":1,'
                  . "\"files\":{\"c.yaml\":{\"body\":\"$_[0]\"}}}" }

# --- the fleet: "bad" fails what it is given, "good" is its control ----------

for my $name (qw(bad good)) {
    my $ag = connect_agent($name);
    $ag->send_msg(OpAMPFleet::with_uid(template_for('edge'), $ag->{uid}));
    ok(defined $ag->recv_msg(5), "$name is answered");
}

my ($H0, $H1, $H2) = map { hash_of("edge v$_") } 0 .. 2;

put('groups/edge', edge('edge v0'));
is_deeply(received(), { bad => $H0, good => $H0 }, 'both are offered v0');
status($_, 'APPLIED', $H0) for qw(bad good);
is_deeply(received(), { bad => '', good => '' }, 'both applied it');

put('groups/edge', edge('edge v1'));
is_deeply(received(), { bad => $H1, good => $H1 }, 'both are offered v1');

# "bad" fails v1 and goes back to v0, as a collector or the supervisor
# does; "good" says nothing of v1
status('bad', 'FAILED', $H1);
status('bad', 'APPLIED', $H0);
is_deeply(received(), { bad => '', good => '' },
          'the failure and the rollback are answered with no offer');
is(field('bad', 'failed_hash'), $H1, 'failed_hash: the hash it failed');
is(field('bad', 'config_hash'), $H0, 'config_hash: the one it runs');
is(field('good', 'failed_hash'), '', 'the control failed nothing');

my $uid_bad = OpAMPFleet::uid_text($agents{bad}{uid});
my $uid_good = OpAMPFleet::uid_text($agents{good}{uid});
my ($st, $d) = api('GET', "agents/$uid_bad");
is($st, 200, 'GET the agent that failed');
is($d->{failed_hash}, $H1, '  the admin API shows the failed hash');
is($d->{config_rolled_back}, JSON::PP::true, '  and that it rolled back');
($st, $d) = api('GET', "agents/$uid_good");
ok(!exists $d->{config_rolled_back}, 'the control has no rollback to show');

# --- after opamp_agent_timeout -----------------------------------------------

pump($TIMEOUT + 1);
say_($_) for qw(bad good);
is_deeply(received(), { bad => '', good => $H1 },
          'after opamp_agent_timeout the control is offered v1 again, the '
          . 'agent that failed it not');

# --- at a reconnect ----------------------------------------------------------

for my $name (qw(bad good)) {
    my $old = $agents{$name};
    $old->close;
    my $ag = connect_agent($name, 'edge', $old->{uid});
    $ag->{seq} = $old->{seq};
}
# with its description, as an agent's first message: the worker keeps its
# attributes, and decides a fleet change for it by itself (below)
say_($_, 'agent_description { identifying_attributes { '
         . 'key: "service.name" value { string_value: "edge" } } }')
    for qw(bad good);
is_deeply(received(), { bad => '', good => $H1 },
          'at a reconnect the control is offered v1 again, the agent that '
          . 'failed it not');
status('good', 'APPLIED', $H1);
is_deeply(received(), { bad => '', good => '' }, 'the control applies v1');

# --- a fleet change that keeps the hash: decided by the worker ---------------

my $other = connect_agent('other');
$other->send_msg(OpAMPFleet::with_uid(template_for('other'), $other->{uid}));
ok(defined $other->recv_msg(5), 'an agent of another service is answered');

my $fanout_decided = $t->redis('GET', "${P}config_version");
put('groups/other', '{"selector":"service.name=other","priority":2,'
                    . '"files":{"c.yaml":{"body":"other v1"}}}');
is($t->redis('GET', "${P}config_version_scope"),
   ($fanout_decided + 1) . ' all', 'a new group: every agent is matched');
is_deeply(received(), { bad => '', good => '', other => hash_of('other v1') },
          'the new group\'s member is offered it; the agent that failed v1 '
          . 'is still owed v1 and not offered it');
is(field('bad', 'desired_hash'), $H1, '  v1 is what it is owed');
is(field('bad', 'failed_hash'), $H1, '  and what it failed');
status('other', 'APPLIED', hash_of('other v1'));
received();

# --- a new version -----------------------------------------------------------

put('groups/edge', edge('edge v2'));
is_deeply(received(), { bad => $H2, good => $H2, other => '' },
          'a new version (another hash) is offered to both');
status('bad', 'FAILED', $H2);
status('bad', 'APPLIED', $H0);
is_deeply(received(), { bad => '', good => '', other => '' },
          'the agent fails v2 too: not offered again');
is(field('bad', 'failed_hash'), $H2, 'failed_hash: v2 now');

# --- an operator retries -----------------------------------------------------

($st, $d) = api('POST', "agents/$uid_bad/retry-config");
is($st, 202, 'POST retry-config: 202');
is_deeply(received(), { bad => $H2, good => '', other => '' },
          'the agent is offered v2 again at once, nobody else anything');
is(field('bad', 'failed_hash'), '', 'failed_hash is gone');
# the audit entry is written after the answer: waited for
my %e;
$t->wait_for(sub {
    my $e = $t->redis('XREVRANGE', "${P}audit", '+', '-', 'COUNT', 1)->[0];
    %e = @{ $e->[1] // [] };
    return ($e{path} // '') =~ /retry-config$/;
}, 5);
is($e{path}, "/admin/agents/$uid_bad/retry-config", 'the retry is audited');
is($e{status}, 202, '  with its result');
is($e{target}, "agent:$uid_bad", '  and its target');

status('bad', 'APPLIED', $H2);
is_deeply(received(), { bad => '', good => '', other => '' },
          'it applies v2 this time');
($st, $d) = api('GET', "agents/$uid_bad");
ok(!exists $d->{config_rolled_back}, 'nothing rolled back to show');

# applied after all: a config reported FAILED and then APPLIED is failed
# no more
status('good', 'FAILED', $H2);
received();
is(field('good', 'failed_hash'), $H2, 'the control fails v2');
status('good', 'APPLIED', $H2);
received();
is(field('good', 'failed_hash'), '', 'and applies it after all: not failed');

($st) = api('POST', 'agents/' . OpAMPFleet::uid_text(OpAMPFleet::random_uid())
                    . '/retry-config');
is($st, 404, 'retry-config of an unknown agent: 404');
($st) = api('GET', "agents/$uid_bad/retry-config");
is($st, 405, 'retry-config is POST only');

$_->close for values %agents;

$t->done;
done_testing;
