#!/usr/bin/perl

# The OpAMP supervisor's client (opamp-go) as it behaves on the wire,
# emulated message by message with the harness's own codec (protoc), over
# WebSocket and plain HTTP; every reply of the module is decoded and
# checked:
#
# 1. first message (sequence 0): description, the supervisor's
#    capabilities, health, effective config, remote config status UNSET,
#    available components as their hash only (opamp-go sends the list
#    only when asked).  Reply: no ReportFullState, ReportAvailableComponents
#    (the module holds no list for that hash), the group's config, and no
#    connection settings: it accepts OpAMP settings, and no operator
#    stored an endpoint (an opamp part without one is refused);
# 2. the component list; the config APPLYING, then APPLIED with the new
#    effective config; heartbeats: answered with nothing owed;
# 3. the supervisor restarted with its persisted state (same uid,
#    sequence 0, APPLIED with the config's hash, components' hash only):
#    no full-state request, no config, no component request (the stored
#    list has that hash), no connection settings;
# 4. the agent restarted without a remote config status, or with another
#    hash: the config in the first reply; its heartbeats after that are
#    not sent it again (offers stay bounded);
# 5. reconnect after a dropped connection (no AgentDisconnect, sequence
#    goes on, opamp-go's reconnect message): nothing owed, no full state;
# 6. out of sequence: a message that carries its full status is taken
#    as it is; one that does not (a heartbeat, or a status without
#    health) is answered with ReportFullState;
# 7. an agent that declares ReportsHeartbeat but does not accept OpAMP
#    connection settings is told the interval and nothing else of the
#    OpAMP settings operators stored; one that declares neither gets no
#    connection settings.

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
$t->start_nginx('
        location /admin/ {
            opamp_admin;
        }', workers => 2, location => '            opamp_heartbeat_interval 7s;');

my $json = JSON::PP->new->canonical;

sub api {
    my ($method, $path, $body) = @_;
    my ($s, undef, $b) = $t->http_post($body // '', -method => $method,
                                       -path => "/admin/$path",
                                       'Content-Type' => 'application/json');
    return ($s, eval { $json->decode($b) });
}

# the capabilities of issue 11: ReportsStatus, AcceptsRemoteConfig,
# ReportsEffectiveConfig, ReportsRemoteConfig, ReportsHealth,
# ReportsHeartbeat, ReportsOwnMetrics, AcceptsRestartCommand,
# ReportsAvailableComponents, AcceptsOpAMPConnectionSettings
my $CAPS = 0x1 | 0x2 | 0x4 | 0x1000 | 0x800 | 0x2000 | 0x40 | 0x400
           | 0x4000 | 0x100;

my $COMP_HASH = '\001\002\003\004\005\006\007\010\011\012\013\014\015\016'
                . '\017\020\021\022\023\024\025\026\027\030\031\032\033'
                . '\034\035\036\037\040';

sub desc {
    my ($svc) = @_;
    return 'agent_description { '
        . join(' ', map { "identifying_attributes { key: \"$_->[0]\" "
                          . "value { string_value: \"$_->[1]\" } }" }
               [ 'service.name', $svc ], [ 'service.version', '0.149.0' ],
               [ 'service.instance.id', 'i-1' ])
        . ' ' . join(' ', map { "non_identifying_attributes { key: "
                                . "\"$_->[0]\" value { string_value: "
                                . "\"$_->[1]\" } }" }
               [ 'host.name', 'web-1' ], [ 'os.type', 'linux' ],
               [ 'host.arch', 'amd64' ])
        . ' }';
}

sub health {
    my ($status) = @_;
    $status //= 'StatusOK';
    return 'health { healthy: true start_time_unix_nano: 1000 '
        . "status: \"$status\" status_time_unix_nano: 2000 "
        . join(' ', map { "component_health_map { key: \"pipeline:$_\" "
                          . 'value { healthy: true status: "StatusOK" '
                          . 'component_health_map { key: "receiver:otlp" '
                          . 'value { healthy: true status: "StatusOK" } } } }' }
               qw(traces metrics logs))
        . ' }';
}

sub effective {
    my ($body) = @_;
    return 'effective_config { config_map { config_map { key: "" value { '
           . "body: \"$body\" content_type: \"text/yaml\" } } } }";
}

sub components_hash { "available_components { hash: \"$COMP_HASH\" }" }

sub components_full {
    return 'available_components { '
        . join(' ', map { "components { key: \"$_->[0]\" value { "
                          . "sub_component_map { key: \"$_->[1]\" value { "
                          . 'metadata { key: "code.namespace" value { '
                          . "string_value: \"$_->[1]\" } } } } } }" }
               [ 'receivers', 'otlp' ], [ 'exporters', 'debug' ],
               [ 'extensions', 'opamp' ])
        . " hash: \"$COMP_HASH\" }";
}

sub status {
    my ($st, $hash) = @_;
    return "remote_config_status { status: RemoteConfigStatuses_$st"
           . ($hash ? ' last_remote_config_hash: "'
                      . uid_escape(pack 'H*', $hash) . '"' : '')
           . ' }';
}

# one agent over one transport: send(text) -> decoded reply
package Agent {
    sub new {
        my ($class, $t, $tr, $uid, %o) = @_;
        my $self = bless { t => $t, tr => $tr, uid => $uid,
                           caps => $o{caps} // $CAPS }, $class;
        $self->connect;
        return $self;
    }

    sub connect {
        my ($self) = @_;
        $self->{ws} = OpAMPFleet->connect_ws(port => $self->{t}->port)
            if $self->{tr} eq 'ws';
    }

    sub drop { delete $_[0]{ws} }    # closes the socket, no goodbye

    sub send {
        my ($self, $seq, $text) = @_;
        my $t = $self->{t};
        my $m = $t->a2s('instance_uid: "' . main::uid_escape($self->{uid})
                        . "\" sequence_num: $seq capabilities: "
                        . "$self->{caps} $text");
        my $raw;
        if ($self->{tr} eq 'ws') {
            $self->{ws}->send_msg($m);
            $raw = $self->{ws}->recv_msg(5);
        } else {
            (my $s, undef, $raw) = $t->http_post($m);
            $raw = undef unless ($s // 0) == 200;
        }
        return defined $raw ? $t->s2a($raw) : undef;
    }
}

sub flag { my ($r, $f) = @_; return ((($r // {})->{flags} // 0) & $f) ? 1 : 0 }

for my $tr ('ws', 'http') {
    # each transport's agent runs a build of its own (a list of the same
    # hash, once stored, is known fleet-wide and not asked for again)
    $COMP_HASH =~ s/\\040$/\\041/ if $tr eq 'http';
    my $svc = "otelcol-contrib-$tr";
    my ($s, $r) = api('PUT', "configs/groups/$svc", $json->encode({
        selector => "service.name=$svc",
        files => { 'collector.yaml' => { body => "receivers: {otlp: {}}\n",
                                         content_type => 'text/yaml' } } }));
    is($s, 200, "$tr: a group config through the admin API");
    my $hash = $r->{config_hash};
    my $uid = random_uid();
    my $a = Agent->new($t, $tr, $uid);

    # --- 1. first message --------------------------------------------------

    my $m = $a->send(0, desc($svc) . ' ' . health() . ' '
                        . effective('receivers: {nop: {}}\n') . ' '
                        . status('UNSET') . ' ' . components_hash());
    ok($m, "$tr: first message answered");
    is(flag($m, 1), 0, "$tr: no ReportFullState");
    is(flag($m, 2), 1, "$tr: ReportAvailableComponents (only the hash came)");
    is(unpack('H*', $m->{remote_config}{config_hash} // ''), $hash,
       "$tr: the group's config");
    ok(!$m->{connection_settings}, "$tr: no connection settings (no "
       . 'operator endpoint for an agent that accepts OpAMP settings)');
    ok($m->{capabilities}, "$tr: the server's capabilities");

    # --- 2. components, config applied, heartbeats -------------------------

    $m = $a->send(1, components_full());
    is(flag($m, 3), 0, "$tr: the list: no flag in the reply");
    ok(!$m->{remote_config}, "$tr: the config not sent again (offered)");
    my $ac = eval { $t->parse('AvailableComponents',
                              $t->agent($uid)->{available_components}) };
    ok($ac->{components}{extensions}{sub_component_map}{opamp},
       "$tr: the component list in Redis");
    $m = $a->send(2, status('APPLYING', $hash));
    ok($m && !$m->{remote_config}, "$tr: APPLYING answered");
    $m = $a->send(3, status('APPLIED', $hash) . ' '
                     . effective('receivers: {otlp: {}}\n'));
    ok($m && !$m->{remote_config} && !flag($m, 3),
       "$tr: APPLIED answered with nothing owed");
    my $st = $t->agent($uid);
    is($st->{config_status}, 'APPLIED', "$tr: APPLIED in Redis");
    is($st->{config_hash}, $hash, "$tr: with the config's hash");
    for my $seq (4, 5) {
        $m = $a->send($seq, '');
        ok($m && !flag($m, 3) && !$m->{remote_config}
           && !$m->{connection_settings}, "$tr: heartbeat $seq: nothing owed");
    }
    # heartbeat 4 found the agent owed nothing in Redis; over WebSocket
    # its worker answered 5 itself (opamp_heartbeat_recheck)
    is($t->agent($uid)->{sequence_num}, $tr eq 'ws' ? 4 : 5,
       "$tr: sequence_num " . ($tr eq 'ws' ? 4 : 5) . ' in Redis');

    # --- 3. the supervisor restarted with its persisted state --------------

    $a->drop;
    $a->connect;
    $m = $a->send(0, desc($svc) . ' ' . health() . ' '
                     . effective('receivers: {otlp: {}}\n') . ' '
                     . status('APPLIED', $hash) . ' ' . components_hash());
    is(flag($m, 1), 0, "$tr: restarted with persisted state: no "
       . 'ReportFullState');
    is(flag($m, 2), 0, "$tr: no ReportAvailableComponents (list of that "
       . 'hash held)');
    ok(!$m->{remote_config}, "$tr: no config (it runs it)");
    ok(!$m->{connection_settings}, "$tr: no connection settings");
    $ac = eval { $t->parse('AvailableComponents',
                           $t->agent($uid)->{available_components}) };
    ok($ac->{components}{receivers},
       "$tr: the stored list was kept, not replaced by the hash");
    $m = $a->send(1, '');
    ok($m && !$m->{connection_settings} && !flag($m, 3),
       "$tr: its next heartbeat: nothing owed");

    # --- 4. restarted without its config: sent in the first reply ---------

    for my $case ([ 'no remote config status', '' ],
                  [ 'UNSET', status('UNSET') ],
                  [ 'another hash', status('APPLIED', 'ab' x 32) ]) {
        $a->drop;
        $a->connect;
        $m = $a->send(0, desc($svc) . ' ' . health() . ' '
                         . effective('receivers: {nop: {}}\n') . ' '
                         . $case->[1] . ' ' . components_hash());
        is(unpack('H*', $m->{remote_config}{config_hash} // ''), $hash,
           "$tr: restarted with $case->[0]: the config in the first reply");
        is(flag($m, 1), 0, "$tr: $case->[0]: no ReportFullState");
        for my $seq (1, 2) {
            $m = $a->send($seq, '');
            ok($m && !$m->{remote_config}, "$tr: $case->[0]: heartbeat "
               . "$seq not sent the config again");
        }
    }
    $m = $a->send(3, status('APPLIED', $hash));
    ok($m && !$m->{remote_config}, "$tr: applied at last");

    # --- 5. reconnect after a dropped connection --------------------------

    $a->drop;
    $a->connect;
    # opamp-go's message on a new connection: no health
    $m = $a->send(4, desc($svc) . ' '
                     . effective('receivers: {otlp: {}}\n') . ' '
                     . status('APPLIED', $hash) . ' ' . components_hash());
    ok($m, "$tr: reconnected");
    is(flag($m, 3), 0, "$tr: reconnect: no flags");
    ok(!$m->{remote_config}, "$tr: reconnect: no config");
    is($t->agent($uid)->{connected}, 1, "$tr: connected");
    is($t->agent($uid)->{transport}, $tr eq 'ws' ? 'websocket' : 'http',
       "$tr: transport");

    # --- 6. out of sequence -----------------------------------------------

    $m = $a->send(9, '');
    is(flag($m, 1), 1, "$tr: a heartbeat out of sequence: ReportFullState");
    $m = $a->send(12, desc($svc) . ' ' . effective('receivers: {}\n') . ' '
                      . status('APPLIED', $hash) . ' ' . components_hash());
    is(flag($m, 1), 1, "$tr: out of sequence, status without health: "
       . 'ReportFullState');
    $m = $a->send(20, desc($svc) . ' ' . health('StatusRecoverableError')
                      . ' ' . effective('receivers: {otlp: {}}\n') . ' '
                      . status('APPLIED', $hash) . ' ' . components_hash());
    is(flag($m, 1), 0, "$tr: out of sequence with the full status: "
       . 'taken as it is');
    $st = $t->agent($uid);
    is($st->{sequence_num}, 20, "$tr: sequence_num 20 stored");
    is(eval { $t->parse('ComponentHealth', $st->{health}) }->{status},
       'StatusRecoverableError', "$tr: its health stored");
    $m = $a->send(21, '');
    is(flag($m, 1), 0, "$tr: the next heartbeat is in sequence");

    # --- 7. who is told what of the connection settings ------------------

    ($s) = api('PUT', 'connection-settings', $json->encode({
        opamp => { destination_endpoint => 'ws://127.0.0.1:1/v1/opamp',
                   headers => { headers => [ { key => 'authorization',
                                               value => 'Bearer x' } ] } },
        own_metrics => { destination_endpoint =>
                         'http://127.0.0.1:1/v1/metrics' } }));
    is($s, 200, "$tr: operators store OpAMP and own-metrics settings");
    my $hb = Agent->new($t, $tr, random_uid(),
                        caps => $CAPS & ~0x100);
    $m = $hb->send(0, desc("$svc-hb") . ' ' . health() . ' '
                      . effective('x') . ' ' . status('UNSET') . ' '
                      . components_hash());
    is($m->{connection_settings}{opamp}{heartbeat_interval_seconds}, 7,
       "$tr: ReportsHeartbeat without AcceptsOpAMPConnectionSettings: "
       . 'told the interval');
    ok(!defined $m->{connection_settings}{opamp}{destination_endpoint}
       && !$m->{connection_settings}{opamp}{headers},
       "$tr: and nothing else of the OpAMP settings");
    is($m->{connection_settings}{own_metrics}{destination_endpoint},
       'http://127.0.0.1:1/v1/metrics', "$tr: own metrics (ReportsOwnMetrics)");
    $m = $hb->send(1, '');
    ok($m && !$m->{connection_settings}, "$tr: once");

    my $bare = Agent->new($t, $tr, random_uid(), caps => 0x1 | 0x2 | 0x2000);
    $m = $bare->send(0, desc("$svc-bare"));
    is($m->{connection_settings}{opamp}{heartbeat_interval_seconds}, 7,
       "$tr: ReportsHeartbeat alone: told the interval");
    ok(!$m->{connection_settings}{own_metrics}
       && !defined $m->{connection_settings}{opamp}{destination_endpoint},
       "$tr: and nothing else");

    my $all = Agent->new($t, $tr, random_uid());
    $m = $all->send(0, desc("$svc-all") . ' ' . health() . ' '
                       . effective('x') . ' ' . status('UNSET') . ' '
                       . components_hash());
    is($m->{connection_settings}{opamp}{destination_endpoint},
       'ws://127.0.0.1:1/v1/opamp', "$tr: AcceptsOpAMPConnectionSettings: "
       . 'the stored OpAMP settings');
    is($m->{connection_settings}{opamp}{heartbeat_interval_seconds}, 7,
       "$tr: with the interval");

    my $none = Agent->new($t, $tr, random_uid(), caps => 0x1 | 0x2 | 0x800);
    $m = $none->send(0, desc("$svc-none") . ' ' . health());
    ok($m && !$m->{connection_settings}, "$tr: neither capability: no "
       . 'connection settings');
    ($s) = api('DELETE', 'connection-settings');
    ok($s == 204 || $s == 200, "$tr: settings deleted");
}

$t->done;
done_testing;
