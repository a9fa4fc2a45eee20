#!/usr/bin/perl

# What a config change concerns (opamp:config_version_scope): the admin API
# says when a change moves no agent between configs (a group's files, one
# agent's own config, connection settings), and agents then keep the
# config they were given without being matched against every group again.
# Each step checks what every agent receives and what Redis holds, so that
# an agent kept where it should have moved (or moved where it should have
# stayed) shows.

use strict;
use warnings;

use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";

use OpAMPTest;
use OpAMPFleet;

my $P = 'opamp:';

my $t = OpAMPTest->new;
$t->start_redis;
$t->start_nginx('
        location /admin/ { opamp_admin; }', workers => 2);

sub template_for {
    my ($service) = @_;
    return OpAMPFleet::template(
        'sequence_num: 0 capabilities: 3 agent_description { '
        . 'identifying_attributes { key: "service.name" '
        . "value { string_value: \"$service\" } } } "
        . 'custom_capabilities { capabilities: "io.example.barrier" }');
}

# a heartbeat with the next sequence number
sub heartbeat {
    my ($ag) = @_;
    $ag->{seq}++;
    $ag->send_msg(OpAMPFleet::encode('AgentToServer',
        'instance_uid: "' . OpAMPFleet::uid_escape($ag->{uid})
        . "\" sequence_num: $ag->{seq} capabilities: 3"));
}

my %agents;
for my $name (qw(edge1 edge2 own other)) {
    my $ag = OpAMPFleet->connect_ws(port => $t->port);
    $ag->{uid} = OpAMPFleet::random_uid();
    $ag->{seq} = 0;
    $ag->send_msg(OpAMPFleet::with_uid(
        template_for($name eq 'other' ? 'other' : 'edge'), $ag->{uid}));
    ok(defined $ag->recv_msg(5), "$name is answered");
    $agents{$name} = $ag;
}

sub field {
    my ($name, $f) = @_;
    return $t->redis('HGET', $P . 'agent:{'
                     . OpAMPFleet::uid_text($agents{$name}{uid}) . '}', $f)
           // '';
}

sub put {
    my ($path, $json) = @_;
    my ($st, $h, $body) = $t->http_post($json, -method => 'PUT',
        -path => "/admin/configs/$path",
        'Content-Type' => 'application/json');
    is($st, 200, "PUT $path");
}

sub hash_of {
    my ($body) = @_;
    return OpAMPFleet::config_hash('c.yaml' => [ $body, '' ]);
}

# the config hash each agent receives for the change just made, or '' for
# nothing.  What "nothing" means is proven, not waited for: a custom
# message queued for every agent and a fleet-wide PUBLISH config reach
# each agent through the same path as the change (its worker's pub/sub
# connection, a check call, the answer in order), so whatever the change
# sends an agent arrives before (or with) that barrier message.
my $barrier = 0;

sub received {
    return OpAMPFleet::barrier_received($t, $P, \%agents, ++$barrier);
}

sub _unescape { return OpAMPTest::_unescape(@_) }

sub scope { return $t->redis('GET', "${P}config_version_scope") // '' }

# --- a new group: every agent is matched ----------------------------------

put('groups/edge', '{"selector":"service.name=edge","priority":1,'
                   . '"files":{"c.yaml":{"body":"edge v1"}}}');
my $version = $t->redis('GET', "${P}config_version");
is(scope(), "$version all", 'a new group concerns every agent');
is_deeply(received(), { edge1 => hash_of('edge v1'),
                        edge2 => hash_of('edge v1'),
                        own => hash_of('edge v1'), other => '' },
          'the members receive it, the other agent nothing');

put('groups/other', '{"selector":"service.name=other","priority":1,'
                    . '"files":{"c.yaml":{"body":"other v1"}}}');
is_deeply(received(), { edge1 => '', edge2 => '', own => '',
                        other => hash_of('other v1') },
          'a second new group reaches its member only');

# --- one agent's own config: that agent moves, no other ----------------------

put('agents/' . OpAMPFleet::uid_text($agents{own}{uid}),
    '{"files":{"c.yaml":{"body":"own v1"}}}');
$version = $t->redis('GET', "${P}config_version");
is(scope(), "$version agent:" . OpAMPFleet::uid_text($agents{own}{uid}),
   'an agent config concerns that agent');
is_deeply(received(), { edge1 => '', edge2 => '', own => hash_of('own v1'),
                        other => '' },
          'the agent receives its own config, nobody else anything');
is(field('own', 'desired_config'), 'agent', 'its own config is desired');

# every agent looks at the change with its next heartbeat
heartbeat($agents{$_}) for sort keys %agents;
is_deeply(received(), { edge1 => '', edge2 => '', own => '', other => '' },
          'heartbeats after it: nothing owed');
is(field($_, 'config_version'), $version, "$_ is at the new version")
    for sort keys %agents;
is(field('edge1', 'desired_config'), 'group:edge', 'edge1 keeps its group');

# --- a group's files: its members get the new hash, nobody moves --------------

put('groups/edge', '{"selector":"service.name=edge","priority":1,'
                   . '"files":{"c.yaml":{"body":"edge v2"}}}');
$version = $t->redis('GET', "${P}config_version");
is(scope(), "$version group:edge", 'new files for the same selector and '
   . 'priority concern no agent\'s choice');
is_deeply(received(), { edge1 => hash_of('edge v2'),
                        edge2 => hash_of('edge v2'), own => '', other => '' },
          'the members of the group receive the new files, the agent with '
          . 'its own config and the other group nothing');
is(field('own', 'desired_config'), 'agent', 'the own config stays desired');
is(field('own', 'desired_hash'), hash_of('own v1'), 'with its hash');
is(field('edge2', 'desired_hash'), hash_of('edge v2'),
   'the members desire the new hash');
heartbeat($agents{$_}) for sort keys %agents;
is_deeply(received(), { edge1 => '', edge2 => '', own => '', other => '' },
          'heartbeats after it: nothing owed again');
is(field('other', 'config_version'), $version, 'other is at the new version');
is(field('other', 'desired_config'), 'group:other', 'in its own group');

# --- a new selector: everybody is matched again ---------------------------

put('groups/edge', '{"selector":"service.name=other","priority":2,'
                   . '"files":{"c.yaml":{"body":"edge v3"}}}');
$version = $t->redis('GET', "${P}config_version");
is(scope(), "$version all", 'a new selector concerns every agent');
is_deeply(received(), { edge1 => '', edge2 => '', own => '',
                        other => hash_of('edge v3') },
          'the agent the selector now matches receives the group');
is(field('other', 'desired_config'), 'group:edge',
   'the group of higher priority is desired');
is(field('edge1', 'desired_config'), '', 'the old members match no group');
is(field('own', 'desired_config'), 'agent', 'the own config stays');

# --- a change written directly, without a scope: everybody is matched -------

$t->redis('HSET', "${P}config:group:other", 'selector', 'service.name=edge');
$t->redis('INCR', "${P}config_version");
heartbeat($agents{$_}) for qw(edge1 edge2);
is_deeply(received(), { edge1 => hash_of('other v1'),
                        edge2 => hash_of('other v1'), own => '', other => '' },
          'a write with INCR config_version and no scope moves the agents '
          . 'at their next heartbeat (the old scope is not trusted)');

# --- an agent two changes behind is matched again ----------------------------

# a plain HTTP agent is looked at only when it polls
my $http_uid = OpAMPFleet::random_uid();
my ($st, $h, $body) = $t->http_post(
    OpAMPFleet::with_uid(template_for('edge'), $http_uid));
is($st, 200, 'an HTTP agent reports');
is(unpack('H*', _unescape((OpAMPFleet::decode('ServerToAgent', $body)
                           =~ /config_hash: "((?:[^"\\]|\\.)*)"/)[0] // '')),
   hash_of('other v1'), 'and is given the group matching it');
my $http_key = $P . 'agent:{' . OpAMPFleet::uid_text($http_uid) . '}';

put('groups/other', '{"selector":"service.name=nobody","priority":1,'
                    . '"files":{"c.yaml":{"body":"other v2"}}}');
received();
put('groups/edge', '{"selector":"service.name=other","priority":2,'
                   . '"files":{"c.yaml":{"body":"edge v4"}}}');
like(scope(), qr/ group:edge$/, 'the last change is of files only');
received();
is($t->redis('HGET', $http_key, 'desired_config'), 'group:other',
   'the HTTP agent has not looked yet');

($st, $h, $body) = $t->http_post(OpAMPFleet::encode('AgentToServer',
    'instance_uid: "' . OpAMPFleet::uid_escape($http_uid)
    . '" sequence_num: 1 capabilities: 3'));
is($st, 200, 'its heartbeat two changes later');
unlike(OpAMPFleet::decode('ServerToAgent', $body), qr/remote_config/,
       'offers nothing: the group left it');
is($t->redis('HGET', $http_key, 'desired_config'), undef,
   'it is matched again, not kept in its group by the last change\'s scope');

# connection settings for the fleet change no config
($st) = $t->http_post(OpAMPFleet::encode('ConnectionSettingsOffers',
                             'hash: "x"'),
    -method => 'PUT', -path => '/admin/connection-settings',
    'Content-Type' => 'application/x-protobuf');
is($st, 200, 'fleet connection settings set');
$version = $t->redis('GET', "${P}config_version");
is(scope(), "$version none", 'connection settings concern no config');

$_->close for values %agents;

$t->done;
done_testing;
