#!/usr/bin/perl

# Log variables (docs/directives.md "Variables"): the access log of an
# OpAMP location names the agent of a plain HTTP message, its sequence
# number, the transport, and what the reply carried; a WebSocket
# handshake's line, written once its first message is answered, names the
# agent the same way; a request that carried no message logs "-".

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
my $log = $t->dir . '/logs/opamp.log';
my $all = $t->dir . '/logs/all.log';
$t->start_nginx("
        access_log $all opamp;
        location /admin/ { opamp_admin; }",
    http => 'log_format opamp "$status $opamp_transport $opamp_instance_uid '
            . '$opamp_sequence_num $opamp_reply";',
    location => "access_log $log opamp;");

sub lines {
    open my $f, '<', $log or return ();
    my @l = <$f>;
    chomp @l;
    return @l;
}

my $u = random_uid;
my $ut = uid_text($u);
my ($s) = $t->http_post($t->a2s('instance_uid: "' . uid_escape($u) . '" '
                                . 'sequence_num: 7 capabilities: 1'));
is($s, 200, 'a message');
$t->wait_for(sub { lines() >= 1 }, 5);
is((lines())[-1], "200 http $ut 7 flags",
   'its line: transport, uid, sequence number, the reply asked for full '
   . 'state (flags)');

($s) = $t->http_post($t->a2s('instance_uid: "' . uid_escape($u) . '" '
                             . 'sequence_num: 0 capabilities: 1 '
                             . 'agent_description { }'));
$t->wait_for(sub { lines() >= 2 }, 5);
is((lines())[-1], "200 http $ut 0 none",
   'a message that is owed nothing: "none"');

# a config for the agent: the next reply carries it
my ($as) = $t->http_post(JSON::PP->new->encode(
                             { files => { 'c.yaml' => { body => 'x: 1' } } }),
                         -method => 'PUT',
                         -path => "/admin/configs/agents/$ut",
                         'Content-Type' => 'application/json');
is($as, 200, 'a config for the agent');
($s) = $t->http_post($t->a2s('instance_uid: "' . uid_escape($u) . '" '
                             . 'sequence_num: 1 capabilities: 3'));
$t->wait_for(sub { lines() >= 3 }, 5);
is((lines())[-1], "200 http $ut 1 remote_config",
   'a reply with a remote config: "remote_config"');

($s) = $t->http_post("\x0a\x03abc");
$t->wait_for(sub { lines() >= 4 }, 5);
like((lines())[-1], qr/^400 http - - error$/,
     'a message with a bad uid: no uid, the reply an error');

($s) = $t->http_post('x', 'Content-Type' => 'text/plain');
$t->wait_for(sub { lines() >= 5 }, 5);
is((lines())[-1], '415 http - - -', 'no message at all: "-"');

my $wu = random_uid;
my $ws = OpAMPFleet->connect_ws(port => $t->port);
ok(!$t->wait_for(sub { lines() >= 6 }, 0.5),
   'a WebSocket handshake: no line before the first message');
$ws->send_msg($t->a2s('instance_uid: "' . uid_escape($wu) . '" '
                      . 'sequence_num: 3 capabilities: 1'));
ok(defined $ws->recv_msg(5), 'a WebSocket agent');
$t->wait_for(sub { lines() >= 6 }, 5);
is((lines())[-1], '101 websocket ' . uid_text($wu) . ' 3 flags',
   'its handshake\'s line, written once its first message is answered, '
   . 'names it');
$ws->send_msg($t->a2s('instance_uid: "' . uid_escape($wu) . '" '
                      . 'sequence_num: 4 capabilities: 1'));
ok(defined $ws->recv_msg(5), 'its next message');
$ws->close;

# a WebSocket agent that says nothing: its line when it goes
my $quiet = OpAMPFleet->connect_ws(port => $t->port);
$quiet->close;
ok($t->wait_for(sub { lines() >= 7 }, 5), 'a silent WebSocket agent leaves');
is((lines())[-1], '101 websocket - - -', 'its line names no agent');
is(scalar(lines()), 7, 'one line per handshake');

# the variables in a location that is not an OpAMP endpoint (a log_format
# of the server or http level): no value, whatever the module keeps there
{
    my ($st) = $t->http_post('', -method => 'GET', -path => '/admin/agents');
    is($st, 200, 'the admin API, logged with the same format');
    ($st) = $t->http_post('{}', -method => 'POST',
                          -path => "/admin/commands/agents/$ut",
                          'Content-Type' => 'application/json');
    ok($t->wait_for(sub {
        open my $f, '<', $all or return 0;
        my @l = <$f>;
        return @l >= 3;
    }, 5), 'its lines are written');
    open my $f, '<', $all or die;
    my @l = <$f>;
    chomp @l;
    is_deeply([ grep { !/^\d+ - - - -$/ } @l ], [],
              'the admin API\'s lines have no OpAMP values (GET and POST)')
        or diag(explain \@l);
}

$t->done;
done_testing;
