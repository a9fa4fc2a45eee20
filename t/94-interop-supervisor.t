#!/usr/bin/perl

# Interop: the OpAMP supervisor (cmd/opampsupervisor of
# opentelemetry-collector-contrib, pinned in t/interop/supervisor/go.mod)
# managing a real OpenTelemetry Collector (built by the Collector's builder
# from t/interop/collector/manifest.yaml: the opamp extension the
# supervisor needs, nop, otlp and debug components), both built by `make
# interop-tools`, against the module over WebSocket and over plain HTTP:
#
# * the collector's description, health, effective config and available
#   components land in Redis as docs/redis-schema.md says;
# * a group config PUT through the admin API is applied by the collector
#   (APPLIED, the effective config then holds it);
# * a config the collector rejects reports FAILED with the collector's
#   error, and the supervisor keeps the last good config;
# * a staged rollout of a config the collector rejects stops at its first
#   stage and rolls back by itself (docs/admin-api.md, "Staged
#   rollouts"): the collector reports the good config again;
# * the restart command restarts the collector (a new process: a new
#   health start time);
# * own-metrics connection settings make the collector send its own
#   metrics to an OTLP/HTTP endpoint this test serves on loopback;
# * the supervisor accepts OpAMP connection settings: it is offered none
#   while no operator set an endpoint, and its log holds no rejection;
#   an offer of an endpoint and a header is made once and followed by
#   one reconnect to that endpoint with that header, and nothing more
#   over a window of WINDOW seconds (connections, polls and offers
#   counted);
# * its heartbeats over WebSocket are answered by the workers, whose
#   lease renewals keep it live and in sequence (opamp_heartbeat_recheck);
# * the supervisor restarted with its persisted state comes back under
#   the same uid without being asked for its full state;
# * nginx reloaded mid-run: the supervisor comes back.
#
# Skips (saying so) only on a machine without Go; see t/lib/OpAMPInterop.pm.

use strict;
use warnings;

use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use JSON::PP;
use IO::Socket::INET;
use IO::Select;
use POSIX ();
use Time::HiRes qw(time sleep);

use OpAMPTest qw(:DEFAULT write_file);
use OpAMPInterop;

my $supervisor = OpAMPInterop::need('opampsupervisor');
my $otelcol = OpAMPInterop::need('otelcol');

my $t = OpAMPTest->new;
$t->start_redis;
$t->start_nginx('
        location /admin/ {
            opamp_admin;
        }
        location = /metrics {
            opamp_metrics;
        }
        # the endpoint of the OpAMP connection settings offer: only with
        # the header the offer carries
        location = /v1/opamp-offered {
            if ($http_x_fleet != "blue") {
                return 403;
            }
            opamp;
            opamp_heartbeat_interval 1s;
        }', workers => 2, location => '            opamp_heartbeat_interval 1s;',
        # a lease short enough that the workers' lease renewals of a
        # settled agent come within a test (half of it), long enough that
        # an offer out unacknowledged is not due again within $WINDOW
        http => 'opamp_agent_timeout 20s;');

# the window after an OpAMP settings offer in which the supervisor's
# connections and polls are counted (a loop made hundreds a second)
my $WINDOW = 8;

my $json = JSON::PP->new->canonical;

# whatever happens, no collector of this test outlives it
END { stop_collectors($t->dir) if $t && ($t->{owner} // 0) == $$ }

sub api {
    my ($method, $path, $body) = @_;
    my ($s, undef, $b) = $t->http_post($body // '', -method => $method,
                                       -path => "/admin/$path",
                                       'Content-Type' => 'application/json');
    return ($s, eval { $json->decode($b) });
}

# a field of the agent hash (by uid text), shared content followed
sub field {
    my ($uid, $f, $type) = @_;
    (my $hex = $uid) =~ s/-//g;
    my $v = $t->agent(pack 'H*', $hex)->{$f};
    return $v unless $type;
    return eval { $t->parse($type, $v // '') } // {};
}

# the lines of a file from byte offset $from on
sub lines_from {
    my ($file, $from) = @_;
    open my $f, '<', $file or return ();
    seek $f, $from // 0, 0;
    return <$f>;
}

# what the supervisor logs when it refuses or fails OpAMP settings
my $REJECTED = qr/must be specified|resulted in invalid configuration|Failed to process OpAMPConnectionSettings|Cannot connect to the OpAMP server using the new settings|Cannot stop the OpAMP client/;

sub full_state_asks {
    return scalar grep { /asking the agent for its full state/ }
                  split /\n/, $t->error_log;
}

# --- an OTLP/HTTP endpoint on loopback: a child that answers every POST
# with 200 and writes "<path> <content-type> <body length>" to a file -----

sub otlp_sink {
    my ($file) = @_;
    my $l = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0,
                                  Listen => 16, ReuseAddr => 1)
        or die "listen: $!\n";
    my $pid = fork() // die "fork: $!\n";
    if ($pid == 0) {
        my $sel = IO::Select->new($l);
        my %buf;
        my $end = time + 600;
        while (time < $end && getppid() > 1) {
            for my $s ($sel->can_read(0.5)) {
                if ($s == $l) {
                    my $c = $l->accept or next;
                    $sel->add($c);
                    $buf{$c} = '';
                    next;
                }
                my $n = sysread($s, $buf{$s}, 65536, length $buf{$s});
                if (!$n) {
                    $sel->remove($s);
                    delete $buf{$s};
                    close $s;
                    next;
                }
                while ($buf{$s} =~ /^(.*?)\r\n\r\n/s) {
                    my $head = $1;
                    my ($len) = $head =~ /^Content-Length:\s*(\d+)/mi;
                    $len //= 0;
                    last if length($buf{$s}) < length($head) + 4 + $len;
                    substr($buf{$s}, 0, length($head) + 4 + $len) = '';
                    my ($path) = $head =~ /^POST (\S+)/;
                    my ($ct) = $head =~ /^Content-Type:\s*(\S+)/mi;
                    if (open my $f, '>>', $file) {
                        print $f ($path // '?') . ' ' . ($ct // '?')
                                 . " $len\n";
                        close $f;
                    }
                    syswrite($s, "HTTP/1.1 200 OK\r\nContent-Type: "
                             . "application/x-protobuf\r\n"
                             . "Content-Length: 0\r\n\r\n");
                }
            }
        }
        POSIX::_exit(0);
    }
    my $port = $l->sockport;
    close $l;
    return ($pid, $port);
}

my $sink_file = $t->dir . '/otlp.txt';
my ($sink_pid, $sink_port) = otlp_sink($sink_file);

sub sink_lines {
    open my $f, '<', $sink_file or return ();
    return <$f>;
}

# a config the collector runs: its pipeline's name marks it in the
# effective config.  No service::telemetry of its own: the supervisor
# merges the own-metrics settings under the remote config, whose readers
# would replace them
sub good {
    my ($mark) = @_;
    return <<"EOF";
receivers:
  nop:
exporters:
  debug:
service:
  pipelines:
    metrics/$mark:
      receivers: [nop]
      exporters: [debug]
EOF
}

sub effective_text {
    my ($uid) = @_;
    my $e = field($uid, 'effective_config', 'EffectiveConfig');
    return join '', map { $_->{body} // '' }
                    values %{ $e->{config_map}{config_map} // {} };
}

# the collectors of a supervisor's storage directory still running
sub stop_collectors { OpAMPInterop::stop_collectors($otelcol, @_) }

# the TCP ports the collectors of a supervisor's storage directory listen
# on: their sockets' inodes, looked up in /proc/net/tcp{,6}
sub collector_listens {
    my ($dir) = @_;
    my %inode;
    for my $p (glob '/proc/[0-9]*') {
        open my $f, '<', "$p/cmdline" or next;
        my $cl = <$f> // '';
        next unless $cl =~ /\Q$otelcol\E/ && $cl =~ /\Q$dir\E/;
        for my $fd (glob "$p/fd/*") {
            my $l = readlink($fd) // '';
            $inode{$1} = 1 if $l =~ /^socket:\[(\d+)\]$/;
        }
    }
    my @ports;
    for my $tab ('/proc/net/tcp', '/proc/net/tcp6') {
        open my $f, '<', $tab or next;
        while (<$f>) {
            my @c = split;
            next unless @c > 9 && $c[3] eq '0A' && $inode{$c[9]};
            push @ports, hex((split /:/, $c[1])[-1]);
        }
    }
    return sort { $a <=> $b } @ports;
}

my $bad = <<'EOF';
receivers:
  bogus_receiver_type:
exporters:
  debug:
service:
  pipelines:
    metrics:
      receivers: [bogus_receiver_type]
      exporters: [debug]
EOF

# TEST_TRANSPORTS=ws (or http) runs one of them
for my $tr (split /,/, $ENV{TEST_TRANSPORTS} // 'ws,http') {
    my $dir = $t->dir . "/sup-$tr";
    mkdir $dir;
    mkdir "$dir/storage";
    my $endpoint = ($tr eq 'ws' ? 'ws' : 'http') . '://127.0.0.1:'
                   . $t->port . '/v1/opamp';
    open my $c, '>', "$dir/supervisor.yaml" or die;
    print $c <<"EOF";
server:
  endpoint: $endpoint
capabilities:
  accepts_remote_config: true
  reports_remote_config: true
  accepts_restart_command: true
  accepts_opamp_connection_settings: true
  reports_effective_config: true
  reports_own_metrics: true
  reports_health: true
  reports_available_components: true
  reports_heartbeat: true
agent:
  executable: $otelcol
  validate_config: true
  # the collector's own telemetry: see telemetry.yaml below
  args: [--config, $dir/telemetry.yaml]
  # generous: on a loaded 2-core machine the collector's first start (a
  # 29 MB Go binary) took longer than 15 s, and the supervisor gave up;
  # a config is applied after the one before has had its time, so the
  # test's own waits for APPLIED are longer than this
  config_apply_timeout: 30s
  bootstrap_timeout: 60s
  env:
    OTEL_METRIC_EXPORT_INTERVAL: "1000"
  description:
    non_identifying_attributes:
      test.transport: $tr
storage:
  directory: $dir/storage
telemetry:
  logs:
    level: debug
    output_paths: [$dir/supervisor.log]
    error_output_paths: [$dir/supervisor.log]
EOF
    close $c;

    # The collector's own metrics would be served on 127.0.0.1:8888 (the
    # default reader), by the supervisor's bootstrap run too, which no
    # config file of the supervisor reaches: one collector per machine.
    # agent::args adds this file after the supervisor's config to every
    # run of the collector; it turns the metrics off, so that nothing
    # listens, but while the own-metrics settings are tested (their
    # reader is then the only one; a file given later wins)
    my $quiet = "service:\n  telemetry:\n    metrics:\n      level: none\n";
    write_file("$dir/telemetry.yaml", $quiet);

    my $start = sub {
        return OpAMPInterop->spawn([ $supervisor, '--config',
                                     "$dir/supervisor.yaml" ],
                                   log => "$dir/stderr.log", dir => $dir);
    };
    my $sup = $start->();

    # --- the collector reports --------------------------------------------

    my $uid;
    ok($t->wait_for(sub {
        my (undef, $d) = api('GET', "agents?attr=test.transport=$tr");
        $uid = $d->{agents}[0]{instance_uid} if $d && @{ $d->{agents} // [] };
        defined $uid && field($uid, 'health') && field($uid, 'effective_config');
    }, 120), "$tr: the supervisor and its collector registered")
        or do { diag(`tail -30 $dir/supervisor.log`); $sup->stop('INT', 20);
                stop_collectors($dir); last };
    my @ports = collector_listens($dir);
    ok(!grep({ $_ == 8888 } @ports), "$tr: the collector does not listen "
       . 'on 8888, where another run\'s would (it listens on: '
       . (join(' ', @ports) || 'nothing') . ')');
    my $st = $t->hgetall("opamp:agent:{$uid}");
    is($st->{transport}, $tr eq 'ws' ? 'websocket' : 'http', "$tr: transport");
    my $caps = $st->{capabilities};
    is($caps & (0x2 | 0x400 | 0x2000 | 0x4000 | 0x40),
       0x2 | 0x400 | 0x2000 | 0x4000 | 0x40,
       "$tr: capabilities as configured ($caps)");
    my $d = field($uid, 'description', 'AgentDescription');
    my %attr = map { $_->{key} => $_->{value}{string_value} }
               @{ $d->{identifying_attributes} // [] },
               @{ $d->{non_identifying_attributes} // [] };
    ok($attr{'service.name'}, "$tr: description: service.name "
       . ($attr{'service.name'} // 'none'));
    is($attr{'service.instance.id'}, $uid,
       "$tr: description: service.instance.id is the instance uid");
    is($attr{'test.transport'}, $tr, "$tr: the supervisor's own attribute");
    ok($t->wait_for(sub {
        field($uid, 'health', 'ComponentHealth')->{healthy} // '' eq 'true'
    }, 30), "$tr: health: healthy");
    my $ac;
    ok($t->wait_for(sub {
        $ac = field($uid, 'available_components', 'AvailableComponents');
        $ac->{components}{extensions}{sub_component_map}{opamp};
    }, 20), "$tr: available components: the collector's list with its "
            . 'opamp extension');
    ok($ac->{components}{exporters}{sub_component_map}{debug},
       "$tr: and its debug exporter");

    # --- a group config, applied by the collector --------------------------

    my ($s, $r) = api('PUT', "configs/groups/sup-$tr", $json->encode({
        selector => "test.transport=$tr",
        files => { 'collector.yaml' => { body => good('first'),
                                         content_type => 'text/yaml' } } }));
    is($s, 200, "$tr: PUT a group config");
    my $hash = $r->{config_hash};
    ok($t->wait_for(sub {
        (field($uid, 'config_status') // '') eq 'APPLIED'
            && (field($uid, 'config_hash') // '') eq $hash;
    }, 120), "$tr: the collector applied it: APPLIED")
        or diag('stored: ' . join(' ', map { "$_=" . (field($uid, $_) // '') }
                                  qw(config_status config_hash sequence_num))
                . " wanted $hash\n" . `grep -i 'remote\|config' $dir/supervisor.log | tail -20`);
    ok($t->wait_for(sub { effective_text($uid) =~ m{metrics/first} }, 30),
       "$tr: its effective config holds the config");

    # --- a config the collector rejects -------------------------------------

    ($s, $r) = api('PUT', "configs/groups/sup-$tr", $json->encode({
        selector => "test.transport=$tr",
        files => { 'collector.yaml' => { body => $bad,
                                         content_type => 'text/yaml' } } }));
    my $bad_hash = $r->{config_hash};
    ok($t->wait_for(sub {
        (field($uid, 'config_status') // '') eq 'FAILED'
            && (field($uid, 'config_hash') // '') eq $bad_hash;
    }, 90), "$tr: a config the collector rejects: FAILED");
    like(field($uid, 'config_error') // '', qr/bogus_receiver_type/,
         "$tr: with the collector's error: "
         . substr(field($uid, 'config_error') // '', 0, 160));
    like(effective_text($uid), qr{metrics/first}, "$tr: the effective "
         . 'config is still the last good one');
    ok($t->wait_for(sub {
        (field($uid, 'health', 'ComponentHealth')->{healthy} // '') eq 'true'
    }, 20), "$tr: and the collector is healthy");

    ($s, $r) = api('PUT', "configs/groups/sup-$tr", $json->encode({
        selector => "test.transport=$tr",
        files => { 'collector.yaml' => { body => good('second'),
                                         content_type => 'text/yaml' } } }));
    $hash = $r->{config_hash};
    ok($t->wait_for(sub {
        (field($uid, 'config_status') // '') eq 'APPLIED'
            && (field($uid, 'config_hash') // '') eq $hash;
    }, 120), "$tr: a good config again: APPLIED");
    ok($t->wait_for(sub { effective_text($uid) =~ m{metrics/second} }, 30),
       "$tr: and the effective config holds it");

    # --- a staged rollout of a config the collector rejects: its first
    # stage (this collector) fails it, the gate rolls it back by itself,
    # and the collector is offered the good config again -----------------

    ($s, $r) = api('PUT', "configs/groups/sup-$tr", $json->encode({
        selector => "test.transport=$tr",
        files => { 'collector.yaml' => { body => "# staged\n$bad",
                                         content_type => 'text/yaml' } },
        rollout => { stages => [ 1, '100%' ], soak_s => 600,
                     gates => { failed => 0 }, on_gate => 'rollback' } }));
    is($s, 200, "$tr: a staged rollout of a bad config");
    my $staged = $r->{config_hash};
    my $ro;
    ok($t->wait_for(sub {
        (undef, $ro) = api('GET', "rollouts/sup-$tr");
        ($ro->{state} // '') eq 'rolled_back';
    }, 120), "$tr: the collector fails it and the rollout rolls back")
        or diag(explain $ro);
    is($ro->{stage}, 1, "$tr: at its first stage");
    is($ro->{counts}{failed}, 1, "$tr: the collector counted as failed");
    is(field($uid, 'failed_hash'), $staged, "$tr: which the agent hash keeps");
    ok($t->wait_for(sub {
        (field($uid, 'config_status') // '') eq 'APPLIED'
            && (field($uid, 'config_hash') // '') eq $hash;
    }, 120), "$tr: the collector reports the good config again: APPLIED");
    (undef, $r) = api('GET', "configs/groups/sup-$tr");
    is($r->{config_hash}, $hash, "$tr: the group keeps the good config");

    # --- restart command ------------------------------------------------------

    my $started = field($uid, 'health', 'ComponentHealth')
                  ->{start_time_unix_nano} // 0;
    ($s) = api('POST', "agents/$uid/restart");
    is($s, 202, "$tr: restart queued");
    ok($t->wait_for(sub {
        my $h = field($uid, 'health', 'ComponentHealth');
        ($h->{start_time_unix_nano} // 0) > $started
            && ($h->{healthy} // '') eq 'true';
    }, 60), "$tr: the collector restarted (a new start time) and is healthy");

    # --- own metrics to an endpoint of the test -----------------------------

    my $before = () = sink_lines();
    write_file("$dir/telemetry.yaml",
               "service:\n  telemetry:\n    metrics:\n      level: normal\n");
    ($s) = api('PUT', "connection-settings/agents/$uid", $json->encode({
        own_metrics => { destination_endpoint =>
                         "http://127.0.0.1:$sink_port/v1/metrics" } }));
    ok($s == 200 || $s == 201 || $s == 204, "$tr: own-metrics settings for "
       . "the agent ($s)");
    ok($t->wait_for(sub { scalar(() = sink_lines()) > $before }, 60),
       "$tr: the collector sends its own metrics to the test's endpoint");
    my @got = sink_lines();
    like($got[-1] // '', qr{^/v1/metrics application/x-protobuf [1-9]},
         "$tr: OTLP/HTTP protobuf: " . ($got[-1] // 'none'));
    api('DELETE', "connection-settings/agents/$uid");
    write_file("$dir/telemetry.yaml", $quiet);

    # --- OpAMP connection settings: one offer, one reconnect --------------

    my @rejected = grep { /$REJECTED/ } lines_from("$dir/supervisor.log");
    is(scalar @rejected, 0, "$tr: accepting OpAMP settings, without an "
       . 'operator endpoint: none offered, none rejected')
        or diag(@rejected[0 .. 2]);
    my $log_at = -s "$dir/supervisor.log";
    my $access = $t->dir . '/logs/access.log';
    my $acc_at = -s $access;
    my $offered = ($tr eq 'ws' ? 'ws' : 'http') . '://127.0.0.1:'
                  . $t->port . '/v1/opamp-offered';
    my $put_ms = time * 1000;
    ($s) = api('PUT', "connection-settings/agents/$uid", $json->encode({
        opamp => { destination_endpoint => $offered,
                   headers => { headers => [ { key => 'x-fleet',
                                               value => 'blue' } ] } } }));
    is($s, 200, "$tr: PUT an OpAMP offer: the endpoint $offered and a "
       . 'header');
    my $clients = sub {
        grep { /Connecting to OpAMP server/ }
            lines_from("$dir/supervisor.log", $log_at);
    };
    ok($t->wait_for(sub {
        my @l = lines_from("$dir/supervisor.log", $log_at);
        my ($i) = grep { $l[$_] =~ /Connecting to OpAMP server/
                         && $l[$_] =~ m{\Q$offered\E} } 0 .. $#l;
        defined $i && grep { /Connected to the server/ } @l[$i .. $#l];
    }, 60), "$tr: the supervisor connects to the offered endpoint (the "
            . 'location refuses it without the header)')
        or diag(lines_from("$dir/supervisor.log", $log_at));
    my $cs_ms = field($uid, 'cs_offered_ms');
    ok(($cs_ms // 0) >= $put_ms - 1000, "$tr: offered once ("
       . ($cs_ms // 'never') . ')');
    my $win_at = -s $access;
    my $conn_at = () = grep { /Connected to the server/ }
                       lines_from("$dir/supervisor.log", $log_at);
    sleep $WINDOW;
    my @polls = grep { m{"POST /v1/opamp} } lines_from($access, $win_at);
    my $conns = (() = grep { /Connected to the server/ }
                      lines_from("$dir/supervisor.log", $log_at)) - $conn_at;
    my $made = () = $clients->();
    note("$tr: in the ${WINDOW}s after the switch: " . scalar(@polls)
         . " polls, $conns OnConnect callbacks (one per WebSocket "
         . "connection, one per HTTP poll); $made OpAMP clients since the "
         . 'offer');
    is($made, 1, "$tr: one new OpAMP client since the offer");
    is(field($uid, 'cs_offered_ms'), $cs_ms, "$tr: no other offer in the "
       . "${WINDOW}s after");
    if ($tr eq 'ws') {
        is($conns, 0, "$tr: no other WebSocket connection in them");
    } else {
        ok(@polls >= 1 && @polls <= 2 * $WINDOW + 4, "$tr: "
           . scalar(@polls) . " polls in them (the heartbeat interval is "
           . '1s)');
        is(scalar(grep { m{"POST /v1/opamp-offered HTTP/[\d.]+" 200 } }
                  @polls), scalar @polls,
           "$tr: each to the offered endpoint, answered");
    }
    is((field($uid, 'connected') // ''), '1', "$tr: connected");
    api('DELETE', "connection-settings/agents/$uid");

    # --- its heartbeats answered by the workers, its lease renewed ---------

    # (WebSocket; opamp_heartbeat_recheck, docs/directives.md): over 14 s
    # of 1 s heartbeats, more than half of the 20 s lease, the workers
    # answer most of them, Redis's sequence_num moves only at the lease
    # renewals, the lease never lapses and the supervisor is never asked
    # for its full state
    if ($tr eq 'ws') {
        my (undef, undef, $m0) = $t->http_post('', -method => 'GET',
                                               -path => '/metrics');
        my ($in0) = $m0 =~ /^opamp_heartbeats_in_worker_total (\d+)$/m;
        my $asks0 = full_state_asks();
        my ($lapsed, %seqs) = (0);
        my $t0 = time;
        while (time - $t0 < 14) {
            my $x = $t->hgetall("opamp:agent:{$uid}");
            $lapsed++ if ($x->{expires_ms} // 0) < int(time * 1000);
            $seqs{$x->{sequence_num} // ''} = 1;
            select undef, undef, undef, 0.5;
        }
        my (undef, undef, $m1) = $t->http_post('', -method => 'GET',
                                               -path => '/metrics');
        my ($in1) = $m1 =~ /^opamp_heartbeats_in_worker_total (\d+)$/m;
        ok(($in1 // 0) - ($in0 // 0) >= 7, "$tr: the workers answered "
           . 'most of its heartbeats themselves ('
           . (($in1 // 0) - ($in0 // 0)) . ' in 14 s)');
        ok(keys(%seqs) >= 2 && keys(%seqs) <= 6, "$tr: Redis's "
           . 'sequence_num moved at the lease renewals alone ('
           . scalar(keys %seqs) . ' values in 14 s)');
        is($lapsed, 0, "$tr: its lease never lapsed");
        is(full_state_asks(), $asks0,
           "$tr: it was never asked for its full state");
        is((field($uid, 'connected') // ''), '1', "$tr: still connected");
    }

    # --- the supervisor restarted with its persisted state ----------------

    my $asks = full_state_asks();
    $sup->stop('INT', 20);
    ok(!$sup->alive, "$tr: the supervisor stopped (SIGINT)");
    stop_collectors($dir);
    my $seq_before = field($uid, 'sequence_num');
    $sup = $start->();
    ok($t->wait_for(sub {
        my $x = $t->hgetall("opamp:agent:{$uid}");
        ($x->{connected} // '') eq '1' && defined $x->{sequence_num}
            && $x->{sequence_num} < $seq_before;
    }, 60), "$tr: restarted, it reports again under the same uid (a new "
            . 'sequence)');
    ok($t->wait_for(sub {
        (field($uid, 'health', 'ComponentHealth')->{healthy} // '') eq 'true'
            && (field($uid, 'config_status') // '') eq 'APPLIED'
    }, 60), "$tr: healthy, the config still APPLIED");
    is(full_state_asks(), $asks, "$tr: it was not asked for its full state");
    is(field($uid, 'config_hash'), $hash, "$tr: with the same config");

    # --- nginx reloaded mid-run -----------------------------------------------

    my $seq = field($uid, 'sequence_num');
    my $conn = field($uid, 'conn');
    ok($t->reload, "$tr: nginx reloaded");
    ok($t->wait_for(sub {
        my $x = $t->hgetall("opamp:agent:{$uid}");
        $x->{sequence_num} >= $seq + 2 && $x->{connected} eq '1'
            && ($tr eq 'http' || $x->{conn} ne $conn);
    }, 60), "$tr: the supervisor comes back to the new workers");
    is(field($uid, 'config_status'), 'APPLIED', "$tr: still APPLIED");

    $sup->stop('INT', 20);
    ok(!$sup->alive, "$tr: the supervisor stopped at the end");
    stop_collectors($dir);

    @rejected = grep { /$REJECTED/ } lines_from("$dir/supervisor.log");
    is(scalar @rejected, 0, "$tr: no OpAMP settings rejected in the "
       . "supervisor's log, through its restart")
        or diag(@rejected[0 .. 2]);
    if ($tr eq 'ws') {
        is(scalar(grep { m{"GET /v1/opamp-offered HTTP/[\d.]+" 101 } }
                  lines_from($access, $acc_at)), 1,
           "$tr: one WebSocket connection to the offered endpoint in all");
    }
    is(scalar(grep { m{ /v1/opamp-offered HTTP/[\d.]+" 403 } }
              lines_from($access)), 0, "$tr: none without the header");
}

kill 'TERM', $sink_pid;
waitpid($sink_pid, 0);
stop_collectors($t->dir);

$t->done;
done_testing;
