#!/usr/bin/perl

# Interop: opamp-go's own client (github.com/open-telemetry/opamp-go, the
# library the OpAMP supervisor is built on, version pinned in
# t/interop/opampgo/go.mod) in a small agent of ours
# (t/interop/opampgo/main.go, built into build/interop/bin by `make
# interop-tools`), over WebSocket and over plain HTTP:
#
# * its description, health, effective config and available components
#   land in Redis as docs/redis-schema.md says;
# * a group config PUT through the admin API reaches it, it reports
#   APPLIED and its effective config then holds the config;
# * the restart command reaches it;
# * nginx reloaded: it comes back (WebSocket: reconnects) without being
#   asked for its full state, nor sent its config again;
# * the same agent restarted as a new process (same instance_uid,
#   sequence_num 0, no remote config status) gets its config in the
#   first reply (over HTTP it waited for opamp_agent_timeout before);
#   an agent that keeps failing a config is not offered it again in
#   every reply;
# * opamp_heartbeat_interval reaches it (it declares ReportsHeartbeat,
#   not AcceptsOpAMPConnectionSettings): an agent whose own interval is
#   60 s heartbeats (HTTP: polls) every second;
# * a second agent with the uid of a live one gets a new instance uid.
#
# Skips (saying so) only on a machine without Go; see t/lib/OpAMPInterop.pm.

use strict;
use warnings;

use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use JSON::PP;
use Time::HiRes qw(time sleep);

use OpAMPTest;
use OpAMPInterop;

my $bin = OpAMPInterop::need('opampgo-agent');

my $t = OpAMPTest->new;
$t->start_redis;
$t->start_nginx('
        location /admin/ {
            opamp_admin;
        }', workers => 2, location => '            opamp_heartbeat_interval 1s;');

my $json = JSON::PP->new->canonical;

# whether agent $ag (over transport $tr) sent heartbeats up to
# sequence_num $n within $secs.  Over HTTP each reaches Redis.  Over
# WebSocket its worker answers most itself (opamp_heartbeat_recheck) and
# stores the last when the connection ends: the agent is stopped (it
# says AgentDisconnect) once it had the time, and Redis read then.
sub heartbeats_stored {
    my ($tr, $ag, $n, $secs) = @_;
    my $seq = sub { $t->agent($ag->{uid})->{sequence_num} // 0 };
    return $t->wait_for(sub { $seq->() >= $n }, $secs) if $tr eq 'http';
    my $from = $seq->();
    sleep 1 + ($n - $from) * 1.2;
    $ag->send('stop');
    $ag->expect(qr/^stopped$/, 10);
    $t->wait_for(sub { ($t->agent($ag->{uid})->{connected} // '') eq '0' },
                 10);
    return $seq->() >= $n;
}

sub api {
    my ($method, $path, $body) = @_;
    my ($s, undef, $b) = $t->http_post($body // '', -method => $method,
                                       -path => "/admin/$path",
                                       'Content-Type' => 'application/json');
    return ($s, eval { $json->decode($b) });
}

my $n = 0;

# an agent process; %o: uid (16 bytes), heartbeat, applied (hex), fail,
# name
sub agent {
    my ($tr, %o) = @_;
    my $uid = $o{uid} // random_uid();
    my $url = ($tr eq 'ws' ? 'ws' : 'http') . '://127.0.0.1:' . $t->port
              . '/v1/opamp';
    $n++;
    my $p = OpAMPInterop->spawn([ $bin, '-url', $url,
        '-uid', uid_hex($uid), '-heartbeat', $o{heartbeat} // '1s',
        '-name', $o{name} // "opamp-go-$tr",
        ($o{applied} ? ('-applied', $o{applied}) : ()),
        ($o{fail} ? ('-fail') : ()) ],
        log => $t->dir . "/logs/agent.$n.log");
    $p->{uid} = $uid;
    return $p;
}

sub decode_field {
    my ($type, $bytes) = @_;
    return eval { $t->parse($type, $bytes // '') } // {};
}

for my $tr ('ws', 'http') {
    my $name = "opamp-go-$tr";
    my $a = agent($tr);
    my $uid = $a->{uid};
    my $key = $t->agent_key($uid);

    ok($a->expect(qr/^connected$/, 10), "$tr: the client connected");
    ok($t->wait_for(sub {
        my $h = $t->agent($uid);
        $h->{description} && $h->{health} && $h->{effective_config}
            && $h->{available_components};
    }, 10), "$tr: description, health, effective config, components in "
            . 'Redis');
    my $st = $t->agent($uid);
    is($st->{transport}, $tr eq 'ws' ? 'websocket' : 'http',
       "$tr: transport");
    is($st->{connected}, 1, "$tr: connected 1");
    is($st->{capabilities}, 0x1 | 0x2 | 0x4 | 0x800 | 0x1000 | 0x2000
                            | 0x400 | 0x4000, "$tr: capabilities as declared");
    my $d = decode_field('AgentDescription', $st->{description});
    my %attr = map { $_->{key} => $_->{value}{string_value} }
               @{ $d->{identifying_attributes} // [] },
               @{ $d->{non_identifying_attributes} // [] };
    is($attr{'service.name'}, $name, "$tr: description service.name");
    is($attr{'service.instance.id'}, uid_hex($uid),
       "$tr: description service.instance.id");
    is($attr{'os.type'}, 'linux', "$tr: a non-identifying attribute");
    my (undef, $view) = api('GET', 'agents/' . uid_text($uid));
    is($view->{attributes}{'service.name'}, $name,
       "$tr: the attributes selectors see (admin API)");
    my $h = decode_field('ComponentHealth', $st->{health});
    is($h->{healthy}, 'true', "$tr: health healthy");
    is($h->{status}, 'ok', "$tr: health status");
    is($h->{component_health_map}{'pipeline:traces'}{healthy}, 'true',
       "$tr: health tree");
    is($st->{healthy}, 1, "$tr: healthy 1");
    my $e = decode_field('EffectiveConfig', $st->{effective_config});
    is($e->{config_map}{config_map}{'agent.yaml'}{body}, "receivers: {}\n",
       "$tr: effective config");
    # opamp-go sends the components' hash only, until the server asks
    # for the list with ReportAvailableComponents (the module did not)
    my $c;
    ok($t->wait_for(sub {
        $c = decode_field('AvailableComponents',
                          $t->agent($uid)->{available_components});
        exists $c->{components}{receivers}{sub_component_map}{otlp};
    }, 10), "$tr: available components, the full list (asked for)")
        or diag explain $c;
    is(length($c->{hash} // ''), 32, "$tr: with their hash");

    # --- a group config through the admin API ---------------------------

    my $body = "receivers:\n  otlp: {}\n# $tr\n";
    my ($s, $r) = api('PUT', "configs/groups/$name", $json->encode({
        selector => "service.name=$name",
        files => { 'agent.yaml' => { body => $body,
                                     content_type => 'text/yaml' } } }));
    is($s, 200, "$tr: PUT a group config");
    my $hash = $r->{config_hash} // '';
    my ($got) = $a->expect(qr/^config ([0-9a-f]+) 1 agent\.yaml (".*")$/,
                           10);
    is($got, $hash, "$tr: the agent received the config");
    ok($a->expect(qr/^applied \Q$hash\E$/, 5), "$tr: and applied it");
    ok($t->wait_for(sub {
        my $x = $t->agent($uid);
        ($x->{config_status} // '') eq 'APPLIED'
            && ($x->{config_hash} // '') eq $hash;
    }, 10), "$tr: APPLIED with its hash in Redis");
    ok($t->wait_for(sub {
        my $x = decode_field('EffectiveConfig',
                             $t->agent($uid)->{effective_config});
        ($x->{config_map}{config_map}{'agent.yaml'}{body} // '') eq $body;
    }, 10), "$tr: the effective config holds the config");
    ($s, $r) = api('GET', 'agents/' . uid_text($uid));
    is($r->{config_status}, 'APPLIED', "$tr: the admin API says APPLIED");
    is($r->{desired_config}, "group:$name", "$tr: from the group");

    # --- restart command ------------------------------------------------

    ($s) = api('POST', 'agents/' . uid_text($uid) . '/restart');
    is($s, 202, "$tr: restart queued");
    ok($a->expect(qr/^command CommandType_Restart$/, 10),
       "$tr: the agent received the restart command");
    ok($t->wait_for(sub {
        (decode_field('ComponentHealth',
                      $t->agent($uid)->{health})->{status} // '')
            eq 'restarted';
    }, 10), "$tr: and reported its health after the restart");
    ok(!defined $t->redis('GET', 'opamp:command:{' . uid_text($uid) . '}'),
       "$tr: the command was taken");

    # --- nginx reloaded: the agent comes back ---------------------------

    my $seq = $t->agent($uid)->{sequence_num};
    my $conn = $t->agent($uid)->{conn};
    ok($t->reload, "$tr: nginx reloaded");
    if ($tr eq 'ws') {
        ok($a->expect(qr/^connected$/, 15), "$tr: the client reconnected");
    }
    ok($t->wait_for(sub {
        my $x = $t->agent($uid);
        $x->{sequence_num} >= $seq + 2 && $x->{connected} eq '1'
            && ($tr eq 'http' || $x->{conn} ne $conn);
    }, 15), "$tr: it goes on reporting to the new workers");
    is($a->count(qr/^config /), 1, "$tr: its config was not sent again");
    ok(exists decode_field('AvailableComponents',
                           $t->agent($uid)->{available_components})
              ->{components}{receivers},
       "$tr: the component list is kept when the hash comes alone again");
    is($t->agent($uid)->{config_status}, 'APPLIED', "$tr: still APPLIED");

    # --- the agent restarted as a new process, same uid -----------------

    $a->send('exit');
    ok($a->wait_exit(5), "$tr: the agent process exited");
    my $b = agent($tr, uid => $uid);
    my ($got2) = $b->expect(qr/^config ([0-9a-f]+) /, 10);
    is($got2, $hash, "$tr: restarted with the same uid and no config "
       . 'status, it gets its config in the first replies');
    ok($b->expect(qr/^applied \Q$hash\E$/, 5), "$tr: and applies it");
    ok($t->wait_for(sub {
        ($t->agent($uid)->{config_status} // '') eq 'APPLIED'
    }, 10), "$tr: APPLIED again");
    $b->send('stop');
    ok($b->expect(qr/^stopped$/, 10), "$tr: the client stopped");
    # opamp-go's HTTP client sends no AgentDisconnect (its WebSocket
    # client does): an HTTP agent stays live until opamp_agent_timeout
    if ($tr eq 'ws') {
        ok($t->wait_for(sub { $t->agent($uid)->{connected} eq '0' }, 10),
           "$tr: its AgentDisconnect marked it disconnected");
    }
    $b->stop;

    # an agent that fails the config: offered once per sequence, not in
    # every reply
    my $f = agent($tr, name => $name, fail => 1);
    ok($f->expect(qr/^failed \Q$hash\E$/, 10), "$tr: a failing agent got "
       . 'the config and reported FAILED');
    ok($t->wait_for(sub {
        ($t->agent($f->{uid})->{config_status} // '') eq 'FAILED'
    }, 10), "$tr: FAILED in Redis");
    my $fseq = $t->agent($f->{uid})->{sequence_num};
    ok(heartbeats_stored($tr, $f, $fseq + 3, 15),
       "$tr: it went on heartbeating, answered by the server");
    is($f->count(qr/^config /), 1, "$tr: the config was offered once");
    is($t->agent($f->{uid})->{config_error}, 'refused by the test agent',
       "$tr: with its error in Redis");
    $f->stop;

    # --- the heartbeat interval of the server reaches the agent --------

    my $slow = agent($tr, heartbeat => '60s', name => "$name-hb");
    ok(heartbeats_stored($tr, $slow, 3, 10),
       "$tr: an agent whose own heartbeat is 60 s heartbeats every second "
       . '(opamp_heartbeat_interval 1s): sequence_num '
       . ($t->agent($slow->{uid})->{sequence_num} // 'none'));
    $slow->stop;

    # --- duplicate instance uid -----------------------------------------

    # a live WebSocket agent holds the uid; a second agent (over this
    # transport) names it too
    my $holder = agent('ws', name => "$name-dup");
    ok($holder->expect(qr/^connected$/, 10), "$tr: a WebSocket agent holds "
       . 'a uid');
    ok($t->wait_for(sub { $t->agent($holder->{uid})->{description} }, 10),
       "$tr: registered");
    my $dup = agent($tr, uid => $holder->{uid}, name => "$name-dup2");
    my ($new) = $dup->expect(qr/^new_uid ([0-9a-f]{32})$/, 10);
    ok($new && $new ne uid_hex($holder->{uid}),
       "$tr: a second agent with the same uid gets a new instance uid");
    ok($t->wait_for(sub {
        ($t->agent(pack 'H*', $new // '0' x 32)->{description} // '') ne ''
    }, 10), "$tr: and reports under it");
    my %who = map { $_ => decode_field('AgentDescription',
                                       $t->agent($_)->{description}) }
              $holder->{uid}, pack('H*', $new // '0' x 32);
    is($who{ $holder->{uid} }{identifying_attributes}[0]{value}
           {string_value}, "$name-dup", "$tr: the holder keeps its uid");
    is($holder->count(qr/^new_uid/), 0, "$tr: and was not renamed");
    $dup->stop;
    $holder->stop;
}

$t->done;
done_testing;
