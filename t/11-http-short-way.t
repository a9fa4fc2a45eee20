#!/usr/bin/perl

# Plain HTTP polls that carry nothing new take the short way (only
# sequence and liveness written, src/lua/lib/short_way.lua), whatever the
# agent's capabilities, also while an offer of the server is out and not
# acknowledged: an agent that accepts a config and never reports its
# status polls so for ever.  The reply is the one the long way gives:
# nothing owed, until the offer is due again (opamp_agent_timeout after
# it was made), when the config comes again.

use strict;
use warnings;

use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";

use OpAMPTest;
use OpAMPFleet;

my $t = OpAMPTest->new;
$t->start_redis;
# an offer is due again after an hour: no poll of this test waits that
# long, however slow the machine (the test moves the clock instead)
$t->start_nginx('
        location /admin/ { opamp_admin; }', workers => 1,
        location => 'opamp_agent_timeout 3600s;');

my $P = 'opamp:';
my $TIMEOUT = 3600000;

my $desc = 'agent_description { identifying_attributes { '
           . 'key: "service.name" value { string_value: "poller" } } }';

# the minimal agent (accepts a config, never reports its status), the
# OpAMP supervisor's set, and the same with ReportsAvailableComponents
for my $caps (0x2803, 0x3d47, 0x7d47) {
    my $name = sprintf '0x%x', $caps;
    my $uid = random_uid();
    my $key = $P . 'agent:{' . uid_text($uid) . '}';
    my $seq = 0;

    my $poll = sub {
        my ($extra) = @_;
        my ($st, $h, $body) = $t->http_post($t->a2s(
            'instance_uid: "' . uid_escape($uid) . '" sequence_num: '
            . $seq++ . " capabilities: $caps " . ($extra // '')));
        is($st, 200, "$name: poll $seq answered") or return '';
        return $t->s2a_text($body);
    };

    my $full = $desc;
    $full .= ' available_components { components { key: "receivers" '
             . 'value { } } hash: "\001" }' if $caps & 0x4000;

    $poll->($full);
    my $quiet = $poll->();
    like($t->redis('HGET', $key, 'settled') // '', qr/^\d+ [0-9a-f]{16}$/,
         "$name: settled, owed nothing");
    is($t->redis('HGET', $key, 'settled_until'), undef,
       "$name: with no offer out, for as long as nothing changes");
    unlike($quiet, qr/flags|remote_config|command|connection_settings/,
           "$name: its poll is answered with nothing owed");

    # a config for its group: offered at the next poll
    my ($st) = $t->http_post('{"selector":"service.name=poller","files":'
                             . '{"p.yaml":{"body":"' . $name . '\n"}}}',
                             -method => 'PUT',
                             -path => '/admin/configs/groups/poller',
                             'Content-Type' => 'application/json');
    ok($st == 200 || $st == 201, "$name: group config stored");
    my $r = $poll->();
    like($r, qr/remote_config \{.*key: "p.yaml"/s, "$name: config offered");
    is($t->redis('HGET', $key, 'settled'), undef,
       "$name: not settled at the poll that carried the offer");

    # not acknowledged: the polls that follow get nothing, as the long way
    # answers them, and take the short way
    $r = $poll->();
    is($r, $quiet, "$name: the next poll gets nothing, the offer is out");
    my $a = $t->agent($uid);
    like($a->{settled} // '', qr/^\d+ [0-9a-f]{16}$/,
         "$name: settled with the offer out");
    is($a->{settled_until}, $a->{offered_ms} + $TIMEOUT,
       "$name: until the offer is due again");
    $t->redis('HSET', $key, server_id => 'marker');
    $r = $poll->();
    is($r, $quiet, "$name: a poll with the offer out gets nothing");
    $a = $t->agent($uid);
    is($a->{server_id}, 'marker',
       "$name: and takes the short way (only sequence and liveness "
       . 'written)');
    is($a->{sequence_num}, $seq - 1, "$name: its sequence stored");

    # the offer due again, as an hour later: offered again, by the long way
    $t->redis('HSET', $key, offered_ms => $a->{offered_ms} - $TIMEOUT,
              settled_until => $a->{settled_until} - $TIMEOUT);
    $r = $poll->();
    like($r, qr/remote_config \{.*key: "p.yaml"/s,
         "$name: offered again once the offer is due");
    isnt($t->redis('HGET', $key, 'server_id'), 'marker',
         "$name: by the long way");
    $poll->();
    $a = $t->agent($uid);
    is($a->{settled_until}, $a->{offered_ms} + $TIMEOUT,
       "$name: settled until the new offer is due");

    if ($caps & 0x1000) {
        # ReportsRemoteConfig: applied, nothing is out any more
        my $hash = $t->redis('HGET', "${P}config:group:poller", 'hash');
        $poll->('remote_config_status { last_remote_config_hash: "'
                . join('', map { sprintf '\\%03o', $_ }
                               unpack 'C*', pack 'H*', $hash)
                . '" status: RemoteConfigStatuses_APPLIED }');
        $a = $t->agent($uid);
        like($a->{settled} // '', qr/^\d+ [0-9a-f]{16}$/,
             "$name: settled once applied");
        is($a->{settled_until}, undef, "$name: for as long as nothing "
           . 'changes');
        $t->redis('HSET', $key, server_id => 'marker');
        is($poll->(), $quiet, "$name: its poll gets nothing");
        is($t->redis('HGET', $key, 'server_id'), 'marker',
           "$name: by the short way");
    }

    $t->http_post('', -method => 'DELETE',
                  -path => '/admin/configs/groups/poller');
}

$t->done;
done_testing;
