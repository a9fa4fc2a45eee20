#!/usr/bin/perl

# opamp_metrics (docs/metrics.md): the server's own figures in the
# Prometheus text format, the sum over two workers in shared memory.
# Counters move by exactly what agents do (HTTP messages by status,
# WebSocket connections opened, open and closed by code, messages and
# bytes by transport, ServerToAgent parts, refusals by reason), Redis
# commands rise and none stays waiting, a reload keeps every figure and
# they go on; the endpoint's own rules (GET and HEAD only, no query
# string, the exposition's Content-Type); `promtool check metrics`; a real
# Prometheus, with examples/prometheus/prometheus.yml and its alert rules,
# scrapes it and answers a query for every family; the Grafana dashboard
# of examples/grafana is JSON whose every metric docs/metrics.md
# documents, and whose every expression Prometheus parses.

use strict;
use warnings;

use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use IO::Socket::INET;
use IO::Select;
use JSON::PP;
use POSIX qw(WNOHANG);
use Time::HiRes qw(time sleep);

use OpAMPTest;
use OpAMPFleet;

my $ROOT = OpAMPTest::root();
my $START = time;

my $t = OpAMPTest->new;
$t->start_redis;
my $d = $t->dir;

# The agents use a second listener with reuseport: the kernel spreads its
# connections over both workers (without it one worker may take them
# all), so that the figures are seen to be summed.  The access log of
# that listener names the worker of each request.
my $AP = OpAMPTest::free_port();
$t->start_nginx('
        location = /metrics {
            opamp_metrics;
        }
        location /admin/ {
            opamp_admin;
        }', workers => 2, location => '
            opamp_max_message_size 4k;', http => "
    log_format pids '\$pid \$request_method \$status';
    server {
        listen 127.0.0.1:$AP reuseport;
        location = /v1/opamp {
            opamp;
            opamp_max_message_size 4k;
            access_log $d/logs/pids.log pids;
        }
    }");

my @WORKERS = $t->worker_pids;
is(scalar @WORKERS, 2, 'two workers');

# --- scraping ------------------------------------------------------------

my $TYPE_RE = qr/^# TYPE (opamp_\w+) (counter|gauge|histogram)$/;

sub get_metrics {
    my (%h) = @_;
    return $t->http_post('', -method => 'GET', -path => '/metrics',
                         'Content-Type' => undef, %h);
}

# the exposition as { 'name{labels}' => value }; {'#types'} => { family =>
# type }, {'#text'} => the text
sub scrape {
    my ($s, $h, $b) = get_metrics();
    die "GET /metrics: " . ($s // 'no answer') . "\n" unless ($s // 0) == 200;
    my (%m, %types);
    for (split /\n/, $b) {
        if (/$TYPE_RE/) { $types{$1} = $2; next }
        next if /^#/;
        /^(\S+) (\S+)$/ or die "not a sample line: $_\n";
        $m{$1} = $2;
    }
    $m{'#types'} = \%types;
    $m{'#text'} = $b;
    return \%m;
}

# the change of one series between two scrapes; a series missing from
# either fails the test rather than reading as 0
sub delta {
    my ($a, $b, $k) = @_;
    for ($a, $b) {
        defined $_->{$k} or do { fail("no series $k"); return 'missing' };
    }
    return $b->{$k} - $a->{$k};
}

# a scrape once the responses asked for are counted: nginx counts a
# response in its log phase, after the last byte is sent, so a client may
# read the response before it is counted
sub scrape_after {
    my ($before, %want) = @_;
    my $m;
    $t->wait_for(sub {
        $m = scrape();
        return !grep { ($m->{$_} // 0) - ($before->{$_} // 0) < $want{$_} }
                     keys %want;
    }, 5);
    return $m;
}

sub R { 'opamp_http_responses_total{kind="' . $_[0] . '",code="' . $_[1] . '"}' }
sub MSG { 'opamp_agent_messages_total{transport="' . $_[0] . '"}' }
sub BYTES { 'opamp_agent_message_bytes_total{transport="' . $_[0] . '"}' }
sub SRV { 'opamp_server_messages_total{transport="' . $_[0] . '"}' }
sub PART { 'opamp_server_message_parts_total{part="' . $_[0] . '"}' }
sub REF { 'opamp_refused_total{reason="' . $_[0] . '"}' }
sub CLOSED { 'opamp_websocket_connections_closed_total{code="' . $_[0] . '"}' }
my $OPEN = 'opamp_websocket_connections';
my $OPENED = 'opamp_websocket_connections_opened_total';

# worker pid => requests of the agents' listener, by "METHOD STATUS"
sub served {
    my %w;
    open my $f, '<', "$d/logs/pids.log" or return \%w;
    while (<$f>) {
        my ($pid, $m, $s) = split;
        $w{$pid}{"$m $s"}++;
    }
    return \%w;
}

# --- the documented families ---------------------------------------------

# docs/metrics.md: one table row per family, "| `name` | type | ..."
my (%DOC, $doc_text);
{
    open my $f, '<', "$ROOT/docs/metrics.md" or die "docs/metrics.md: $!\n";
    local $/;
    $doc_text = <$f>;
    while ($doc_text =~ /^\| `(opamp_\w+)(?:\{[^`]*\})?` \| (counter|gauge|histogram) \|/mg) {
        $DOC{$1} = $2;
    }
}
ok(keys %DOC >= 20, 'docs/metrics.md documents ' . (keys %DOC) . ' families');

my $m0 = scrape();
is_deeply($m0->{'#types'}, { map { $_ => $DOC{$_} }
                             grep { exists $m0->{'#types'}{$_} } keys %DOC },
          'every family served is documented, with its type');
my @undoc = grep { !exists $DOC{$_} } sort keys %{ $m0->{'#types'} };
is("@undoc", '', 'no family served that docs/metrics.md lacks');
my @unserved = grep { !exists $m0->{'#types'}{$_} } sort keys %DOC;
is("@unserved", '', 'every family docs/metrics.md documents is served');

{
    my %help = map { /^# HELP (\S+) \S/ ? ($1 => 1) : () }
               split /\n/, $m0->{'#text'};
    my @nohelp = grep { !$help{$_} } sort keys %{ $m0->{'#types'} };
    is("@nohelp", '', '# HELP for every family');
}
like($m0->{'opamp_build_info{nginx_version="1.22.1",schema="3"}'} // '',
     qr/^1$/, 'opamp_build_info names nginx and the schema');

# --- the endpoint ----------------------------------------------------------

{
    my ($s, $h, $b) = get_metrics();
    is($s, 200, 'GET /metrics: 200');
    is($h->{'content-type'}, 'text/plain; version=0.0.4; charset=utf-8',
       'Content-Type of the text exposition format 0.0.4');
    is($h->{'content-length'}, length $b, 'Content-Length of the body');

    ($s, $h) = $t->http_post('x', -path => '/metrics');
    is($s, 405, 'POST /metrics: 405');
    ($s) = $t->http_post('', -method => 'PUT', -path => '/metrics');
    is($s, 405, 'PUT /metrics: 405');
    ($s, $h, $b) = get_metrics(-path => '/metrics?x=1');
    is($s, 400, 'GET /metrics?x=1: 400 (the exposition takes no arguments)');

    # HEAD: the headers of a GET, no body (read to the end: the harness's
    # reader would stop at the headers)
    my $c = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                  PeerPort => $t->port, Proto => 'tcp',
                                  Timeout => 5) or die;
    syswrite($c, "HEAD /metrics HTTP/1.1\r\nHost: x\r\n"
                 . "Connection: close\r\n\r\n");
    my $resp = '';
    my $sel = IO::Select->new($c);
    my $deadline = time + 5;
    while (time < $deadline && $sel->can_read($deadline - time)) {
        sysread($c, $resp, 65536, length $resp) or last;
    }
    my ($head, $rest) = split /\r\n\r\n/, $resp, 2;
    like($head // '', qr{^HTTP/1\.1 200 }, 'HEAD /metrics: 200');
    like($head // '', qr{^Content-Type: text/plain; version=0\.0\.4; charset=utf-8\r?$}m,
         'HEAD: the same Content-Type');
    is($rest, '', 'HEAD: no body');
}

{
    my $a = scrape();
    my $b = scrape();
    my @moved = grep { /^opamp_http_responses_total/ && $a->{$_} != $b->{$_} }
                keys %$a;
    is("@moved", '', 'scrapes are not counted as OpAMP responses');
}

# --- promtool check metrics -----------------------------------------------

SKIP: {
    skip 'promtool not installed (Debian package prometheus)', 1
        unless -x '/usr/bin/promtool' || `command -v promtool` =~ /\S/;
    open my $p, '|-', "promtool check metrics > $d/promtool.out 2>&1"
        or die "promtool: $!\n";
    print $p $m0->{'#text'};
    close $p;
    my $rc = $? >> 8;
    my $out = do { local (@ARGV, $/) = "$d/promtool.out"; <> } // '';
    ok($rc == 0 && $out !~ /\S/, 'promtool check metrics: no problem')
        or diag("exit $rc: $out");
}

# --- plain HTTP messages ---------------------------------------------------

my $DESC = 'agent_description { identifying_attributes { key: '
           . '"service.name" value { string_value: "metrics" } } }';

# capabilities: ReportsStatus 0x1, AcceptsRemoteConfig 0x2
my $WITH_DESC = OpAMPFleet::template("sequence_num: 0 capabilities: 3 $DESC");
my $NO_DESC = OpAMPFleet::template('sequence_num: 0 capabilities: 3');

my $before = scrape();
my ($posted, $bytes, $flagged, $ok) = (0, 0, 0, 0);
for my $i (1 .. 24) {
    # an unknown agent without its description is asked for full state
    my $body = OpAMPFleet::with_uid($i <= 4 ? $NO_DESC : $WITH_DESC,
                                    random_uid());
    my ($s, $h, $b) = $t->http_post($body, -port => $AP);
    $posted++;
    $bytes += length $body;
    $ok++ if ($s // 0) == 200;
    $flagged++ if ($t->s2a($b)->{flags} // 0) & 1;
}
my $after = scrape_after($before, R('message', 200) => 24);

is($ok, 24, '24 plain HTTP messages answered 200');
is($flagged, 4, 'the 4 unknown agents without a description asked for full state');
is(delta($before, $after, R('message', 200)), 24,
   'http_responses_total{kind="message",code="200"}: +24');
is(delta($before, $after, MSG('http')), 24,
   'agent_messages_total{transport="http"}: +24');
is(delta($before, $after, BYTES('http')), $bytes,
   "agent_message_bytes_total{transport=\"http\"}: +$bytes, the bytes sent");
is(delta($before, $after, SRV('http')), 24,
   'server_messages_total{transport="http"}: +24');
is(delta($before, $after, PART('flags')), 4,
   'server_message_parts_total{part="flags"}: +4 (the ReportFullState replies)');
is(delta($before, $after, PART('error')), 0, 'no error part');
is(delta($before, $after, MSG('websocket')), 0, 'nothing counted for WebSocket');

{
    my $w = served();
    my @by = map { $w->{$_}{'POST 200'} // 0 } @WORKERS;
    is($by[0] + $by[1], 24, 'the access log has the 24 messages');
    ok($by[0] > 0 && $by[1] > 0,
       "both workers served some (@by): the figures are their sum");
}

# bad requests, each by its status
$before = scrape();
my ($s) = $t->http_post("\xff\xff\xff\xff", -port => $AP);
is($s, 400, 'a body that is not an AgentToServer: 400');
($s) = $t->http_post('', -method => 'PUT', -port => $AP);
is($s, 405, 'PUT to the OpAMP location: 405');
($s) = $t->http_post('x' x 5000, -port => $AP);
is($s, 413, 'a body over opamp_max_message_size: 413');
($s) = $t->http_post('x', -port => $AP, 'Content-Type' => 'text/plain');
is($s, 415, 'a body that is not application/x-protobuf: 415');
($s) = $t->http_post('not gzip', -port => $AP, 'Content-Encoding' => 'gzip');
is($s, 400, 'a body that does not gunzip: 400');
$after = scrape_after($before, R('message', 400) => 2, R('message', 405) => 1,
                      R('message', 413) => 1, R('message', 415) => 1);

is(delta($before, $after, REF('limit')), 1,
   'refused_total{reason="limit"}: +1 (the 413)');
is(delta($before, $after, REF('protocol')), 2,
   'refused_total{reason="protocol"}: +2 (the 405, the 415)');

is(delta($before, $after, R('message', 400)), 2, '{kind="message",code="400"}: +2');
is(delta($before, $after, R('message', 405)), 1, '{kind="message",code="405"}: +1');
is(delta($before, $after, R('message', 413)), 1, '{kind="message",code="413"}: +1');
is(delta($before, $after, R('message', 200)), 0, '{kind="message",code="200"}: +0');
is(delta($before, $after, REF('decode')), 2,
   'refused_total{reason="decode"}: +2 (not a message, not gzip)');
is(delta($before, $after, MSG('http')), 0,
   'a message that does not decode is not an agent message');
is(delta($before, $after, SRV('http')), 1,
   'the BAD_REQUEST reply is a server message');
is(delta($before, $after, PART('error')), 1, 'server_message_parts_total{part="error"}: +1');

# --- WebSocket -------------------------------------------------------------

is($before->{$OPEN}, 0, 'no WebSocket connection open yet');

# at least 8 agents, and more until both workers hold some (the agent's
# hash in Redis names its worker's channel): the fanout below counts on it
$before = scrape();
my (@ws, @wsuid, %holds);
my $wsbytes = 0;
for my $i (1 .. 40) {
    my $ag = OpAMPFleet->connect_ws(port => $AP);
    my $uid = random_uid();
    my $msg = OpAMPFleet::with_uid($WITH_DESC, $uid);
    $ag->send_msg($msg);
    $wsbytes += length $msg;
    defined $ag->recv_msg(5) or fail("agent $i has its reply");
    push @ws, $ag;
    push @wsuid, $uid;
    my $ch = $t->redis('HGET', $t->agent_key($uid), 'channel') // '';
    $holds{$1}++ if $ch =~ /:(\d+)$/;
    last if @ws >= 8 && keys %holds == 2;
}
my $N = @ws;
{
    my $schema = $t->redis('HGET', $t->agent_key($wsuid[0]), 'schema');
    my ($label) = grep { /^opamp_build_info\{/ } keys %$m0;
    like($label, qr/schema="\Q$schema\E"/,
         "opamp_build_info's schema is the one agents are stored with ($schema)");
}
$after = scrape_after($before, R('upgrade', 101) => $N);

is(delta($before, $after, $OPENED), $N, "websocket_connections_opened_total: +$N");
is($after->{$OPEN}, $N, "websocket_connections: $N");
is(delta($before, $after, R('upgrade', 101)), $N,
   "http_responses_total{kind=\"upgrade\",code=\"101\"}: +$N");
is(delta($before, $after, MSG('websocket')), $N,
   "agent_messages_total{transport=\"websocket\"}: +$N");
is(delta($before, $after, BYTES('websocket')), $wsbytes,
   "agent_message_bytes_total{transport=\"websocket\"}: +$wsbytes, the messages sent");
is(delta($before, $after, SRV('websocket')), $N,
   "server_messages_total{transport=\"websocket\"}: +$N");
is(delta($before, $after, MSG('http')), 0, 'nothing counted for HTTP');
{
    my $w = served();
    my @by = map { $w->{$_}{'GET 101'} // 0 } @WORKERS;
    is($by[0] + $by[1], $N, "the access log has the $N handshakes");
    ok($by[0] > 0 && $by[1] > 0, "both workers hold some (@by)");
}

# a remote config pushed to one agent through the admin API
$before = $after;
my $json = JSON::PP->new->canonical;
($s) = $t->http_post($json->encode({ files => { 'c.yaml' => { body => 'x: 1' } } }),
                     -method => 'PUT', 'Content-Type' => 'application/json',
                     -path => '/admin/configs/agents/' . uid_text($wsuid[0]));
is($s, 200, 'PUT an agent config');
my $r = $ws[0]->recv_msg(5);
ok(defined $r && $t->s2a_text($r) =~ /remote_config/, 'the agent receives it');
$after = scrape();
is(delta($before, $after, PART('remote_config')), 1,
   'server_message_parts_total{part="remote_config"}: +1');
is(delta($before, $after, SRV('websocket')), 1,
   'server_messages_total{transport="websocket"}: +1');

# a group config: every worker fans it out to its agents
$before = $after;
($s) = $t->http_post($json->encode({ selector => 'service.name=metrics',
                                     files => { 'g.yaml' => { body => 'g: 1' } } }),
                     -method => 'PUT', 'Content-Type' => 'application/json',
                     -path => '/admin/configs/groups/metrics');
is($s, 200, 'PUT a group config');
my $got = 0;
for my $i (1 .. $#ws) {
    my $m = $ws[$i]->recv_msg(5);
    $got++ if defined $m && $t->s2a_text($m) =~ /remote_config/;
}
is($got, $N - 1, 'the ' . ($N - 1)
                 . ' agents without a config of their own receive it');
my $FCOUNT = 'opamp_config_fanout_seconds_count';
$t->wait_for(sub { delta($before, scrape(), $FCOUNT) == 2 }, 5);
$after = scrape();
is(delta($before, $after, 'opamp_config_fanouts_total'), 2,
   'config_fanouts_total: +2 (the change, counted by each worker)');
is(delta($before, $after, $FCOUNT), 2,
   'config_fanout_seconds_count: +2 (each worker reached its agents)');
is(delta($before, $after, PART('remote_config')), $N - 1,
   'server_message_parts_total{part="remote_config"}: +' . ($N - 1));

# the agents close with 1000
$before = $after;
$_->close for @ws;
$t->wait_for(sub { scrape()->{$OPEN} == 0 }, 5);
$after = scrape();
is($after->{$OPEN}, 0, 'websocket_connections: back to 0');
is(delta($before, $after, CLOSED(1000)), $N,
   "websocket_connections_closed_total{code=\"1000\"}: +$N");
is(delta($before, $after, $OPENED), 0, 'opened: +0');

# a message over opamp_max_message_size: 1009, refused as over a limit
sub close_code {
    my ($ag) = @_;
    $ag->recv_msg(5);
    return $ag->{closed};
}

my $before_bad = $before = $after;
my $big = OpAMPFleet->connect_ws(port => $AP);
$big->send_msg('x' x 5000);
is(close_code($big), 1009, 'a message over the limit: closed with 1009');
close $big->sock;
$t->wait_for(sub { scrape()->{$OPEN} == 0 }, 5);
$after = scrape();
is(delta($before, $after, CLOSED(1009)), 1, 'closed_total{code="1009"}: +1');
is(delta($before, $after, REF('limit')), 1, 'refused_total{reason="limit"}: +1');
is(delta($before, $after, REF('protocol')), 0, 'refused_total{reason="protocol"}: +0');

# an unmasked frame: 1002, refused as a protocol error
$before = $after;
my $bad = OpAMPFleet->connect_ws(port => $AP);
syswrite($bad->sock, "\x82\x02\x00x");
is(close_code($bad), 1002, 'an unmasked frame: closed with 1002');
close $bad->sock;
$t->wait_for(sub { scrape()->{$OPEN} == 0 }, 5);
$after = scrape();
is(delta($before, $after, CLOSED(1002)), 1, 'closed_total{code="1002"}: +1');
is(delta($before, $after, REF('protocol')), 1, 'refused_total{reason="protocol"}: +1');
is(delta($before, $after, REF('limit')), 0, 'refused_total{reason="limit"}: +0');
is(delta($before_bad, $after, $OPENED), 2, 'opened: +2 for the two');
is($after->{$OPEN}, 0, 'websocket_connections: 0');

# --- Redis ---------------------------------------------------------------

ok($after->{opamp_redis_commands_total} > $m0->{opamp_redis_commands_total},
   "redis_commands_total rose ($m0->{opamp_redis_commands_total} -> "
   . "$after->{opamp_redis_commands_total})");
ok($after->{'opamp_redis_latency_seconds_count'}
   > $m0->{'opamp_redis_latency_seconds_count'},
   'redis_latency_seconds_count rose');
ok($t->wait_for(sub { scrape()->{opamp_redis_commands_waiting} == 0 }, 5),
   'redis_commands_waiting back to 0 when idle');
is($after->{opamp_redis_errors_total}, 0, 'no Redis error');
is($after->{opamp_redis_timeouts_total}, 0, 'no Redis timeout');

# histogram buckets: cumulative, +Inf equals _count
for my $h (qw(opamp_redis_latency_seconds opamp_config_fanout_seconds)) {
    my @b = map { $after->{$_} }
            sort { my ($x) = $a =~ /le="([^"]+)"/; my ($y) = $b =~ /le="([^"]+)"/;
                   ($x eq '+Inf' ? 1e99 : $x) <=> ($y eq '+Inf' ? 1e99 : $y) }
            grep { /^${h}_bucket\{/ } keys %$after;
    my $mono = !grep { $b[$_] < $b[$_ - 1] } 1 .. $#b;
    ok(@b > 2 && $mono && $b[-1] == $after->{"${h}_count"},
       "$h: cumulative buckets, +Inf = _count");
}

# --- reload --------------------------------------------------------------

my $held = OpAMPFleet->connect_ws(port => $AP);
$held->send_msg(OpAMPFleet::with_uid($WITH_DESC, random_uid()));
$held->recv_msg(5);
$before = scrape();
is($before->{$OPEN}, 1, 'one agent held across the reload');

ok($t->reload, 'reload');
is(close_code($held), 1001, 'the held agent is closed with 1001');
close $held->sock;
$t->wait_for(sub { scrape()->{$OPEN} == 0 }, 10);
$after = scrape();

my @lost;
for my $k (keys %$before) {
    next if $k =~ /^#/;
    my ($fam) = $k =~ /^(\w+)/;
    $fam =~ s/_(bucket|sum|count)$// unless $before->{'#types'}{$fam};
    next unless ($before->{'#types'}{$fam} // '') =~ /counter|histogram/;
    push @lost, "$k $before->{$k} -> " . ($after->{$k} // 'missing')
        unless defined $after->{$k} && $after->{$k} >= $before->{$k};
}
is(join("\n", @lost), '', 'after the reload no counter went back');
is(delta($before, $after, R('message', 200)), 0,
   'the 200 counter kept its value exactly');
ok($before->{R('message', 200)} >= 24, 'which is not 0');
is(delta($before, $after, CLOSED(1001)), 1, 'closed_total{code="1001"}: +1');
is($after->{$OPEN}, 0,
   'websocket_connections: 0 once the old worker closed its agent');

($s) = $t->http_post(OpAMPFleet::with_uid($WITH_DESC, random_uid()),
                     -port => $AP);
my $next = scrape_after($after, R('message', 200) => 1);
is(delta($after, $next, R('message', 200)), 1,
   'and it goes on: +1 for the next message');
is(delta($after, $next, MSG('http')), 1, 'agent_messages_total too');
my $held2 = OpAMPFleet->connect_ws(port => $AP);
$next = scrape();
is($next->{$OPEN}, 1, 'the new workers count their connections');
$held2->close;

my $final = scrape();

# --- a real Prometheus -------------------------------------------------------

# the Prometheus this test started, stopped by its pid, also when the
# test dies on the way
our $PROM_PID;

sub stop_prometheus {
    my $pid = $PROM_PID or return;
    undef $PROM_PID;
    kill 'TERM', $pid;
    my $deadline = time + 10;
    sleep 0.05 while waitpid($pid, WNOHANG) == 0 && time < $deadline;
    if (kill 0, $pid) { kill 'KILL', $pid; waitpid($pid, 0) }
}

END { local ($?, $@, $!); stop_prometheus() }

sub api_get {
    my ($port, $path) = @_;
    # Prometheus may not listen yet
    my ($s, $h, $b) = eval {
        $t->http_post('', -method => 'GET', -port => $port, -path => $path,
                      'Content-Type' => undef, -timeout => 5);
    };
    return eval { decode_json($b // '') } // {};
}

sub uri_escape {
    my ($v) = @_;
    $v =~ s/([^A-Za-z0-9\-._~])/sprintf '%%%02X', ord $1/ge;
    return $v;
}

sub query {
    my ($port, $q) = @_;
    return api_get($port, '/api/v1/query?query=' . uri_escape($q));
}

my $dash = do {
    open my $f, '<', "$ROOT/examples/grafana/opamp-dashboard.json"
        or die "examples/grafana/opamp-dashboard.json: $!\n";
    local $/;
    <$f>;
};
my $dj = eval { decode_json($dash) };
ok($dj, 'the Grafana dashboard is JSON') or diag($@);
$dj //= {};

# every expression of the dashboard, its panels nested in rows or not
my @exprs;
{
    my @todo = @{ $dj->{panels} // [] };
    while (my $p = shift @todo) {
        push @todo, @{ $p->{panels} // [] };
        push @exprs, map { $_->{expr} } grep { defined $_->{expr} }
                     @{ $p->{targets} // [] };
    }
}
ok(@exprs >= 10, scalar(@exprs) . ' expressions in the dashboard');
ok(($dj->{schemaVersion} // 0) >= 36, "schemaVersion $dj->{schemaVersion}");
ok((grep { ($_->{type} // '') eq 'datasource'
           && ($_->{query} // '') eq 'prometheus' }
    @{ $dj->{templating}{list} // [] }),
   'a Prometheus datasource variable');
{
    my @rows = map { $_->{title} } grep { ($_->{type} // '') eq 'row' }
               @{ $dj->{panels} // [] };
    is("@rows", 'Server Fleet', 'one row for the server, one for the fleet');
}

# every metric name the dashboard uses is one docs/metrics.md documents
# (a family of the tables, or a name of the Fleet gauges section)
{
    my %named = map { $_ => 1 } ($doc_text =~ /`(opamp_\w+)/g);
    my @unknown;
    for my $e (@exprs) {
        for my $n ($e =~ /\b(opamp_\w+)/g) {
            (my $fam = $n) =~ s/_(bucket|sum|count)$//
                if !$named{$n} && $n =~ /_(bucket|sum|count)$/;
            push @unknown, $n unless $named{$fam // $n} || $named{$n};
        }
    }
    is("@unknown", '', 'every metric of the dashboard is documented');
}

SKIP: {
    my $prom = -x '/usr/bin/prometheus' ? '/usr/bin/prometheus'
             : (`command -v prometheus` =~ /(\S+)/)[0];
    my $promtool = -x '/usr/bin/promtool' ? '/usr/bin/promtool'
                 : (`command -v promtool` =~ /(\S+)/)[0];
    skip 'prometheus and promtool not installed (Debian package prometheus)',
         10 + keys %DOC unless $prom && $promtool;

    my $rules = "$ROOT/examples/prometheus/opamp-alerts.yml";
    my $out = `$promtool check rules $rules 2>&1`;
    ok($? == 0 && $out =~ /SUCCESS: (\d+) rules found/ && $1 >= 15,
       'promtool check rules examples/prometheus/opamp-alerts.yml')
        or diag($out);

    # the alerts fire on what they are for, not on a reload's dip
    $out = `cd $ROOT/examples/prometheus && $promtool test rules opamp-alerts.test.yml 2>&1`;
    ok($? == 0 && $out =~ /SUCCESS/,
       'promtool test rules examples/prometheus/opamp-alerts.test.yml')
        or diag($out);

    # the example scrape config, pointed at this nginx, every second
    my $conf = do {
        open my $f, '<', "$ROOT/examples/prometheus/prometheus.yml" or die;
        local $/;
        <$f>;
    };
    my $n = 0;
    $n += $conf =~ s/^(\s*scrape_interval:) 15s$/$1 1s/m;
    $n += $conf =~ s/^(\s*evaluation_interval:) 15s$/$1 1s/m;
    $n += $conf =~ s/^(\s*- )opamp-alerts\.yml$/$1$rules/m;
    $n += $conf =~ s/^(\s*- )127\.0\.0\.1:4320$/${1}127.0.0.1:${\ $t->port}/m;
    is($n, 4, 'the example scrape config: target, intervals, rule file');
    open my $f, '>', "$d/prometheus.yml" or die;
    print $f $conf;
    close $f;
    $out = `$promtool check config $d/prometheus.yml 2>&1`;
    ok($? == 0, 'promtool check config') or diag($out);

    my $pport = OpAMPTest::free_port();
    my $pid = $PROM_PID = fork() // die "fork: $!\n";
    if ($pid == 0) {
        open STDOUT, '>>', "$d/logs/prometheus.log";
        open STDERR, '>&', \*STDOUT;
        exec $prom, "--config.file=$d/prometheus.yml",
             "--storage.tsdb.path=$d/prometheus",
             "--web.listen-address=127.0.0.1:$pport", '--log.level=warn'
            or POSIX::_exit(127);
    }

    my $up = $t->wait_for(sub {
        my $r = query($pport, 'up{job="opamp"}');
        return ($r->{data}{result}[0]{value}[1] // '') eq '1';
    }, 30);
    ok($up, 'Prometheus scrapes the endpoint (up == 1)')
        or diag(`tail -20 $d/logs/prometheus.log`);

    # one series of every family served with one (a family labelled by
    # operator-made names may have none yet): counters and gauges by name,
    # a histogram by its _count
    my %sampled;
    for my $k (keys %$final) {
        next if $k =~ /^#/;
        my ($n) = $k =~ /^(\w+)/;
        $n =~ s/_(bucket|sum|count)$// unless $final->{'#types'}{$n};
        $sampled{$n} = 1;
    }
    my @server = grep { !/^opamp_fleet_/ && !$sampled{$_} } sort keys %DOC;
    is("@server", '', 'every server family has a series');
    my %want = map { $_ => ($DOC{$_} eq 'histogram' ? "${_}_count" : $_) }
               grep { $sampled{$_} } keys %DOC;
    my %have;
    $t->wait_for(sub {
        for my $fam (grep { !$have{$_} } sort keys %want) {
            my $r = query($pport, $want{$fam});
            $have{$fam} = 1 if ($r->{status} // '') eq 'success'
                               && @{ $r->{data}{result} // [] };
        }
        return keys %have == keys %want;
    }, 10);
    ok($have{$_}, "Prometheus has $want{$_}") for sort keys %want;

    # a value Prometheus read is the one served
    my $r = query($pport, R('message', 200));
    is($r->{data}{result}[0]{value}[1], $final->{R('message', 200)},
       'and reads the 200 counter as served');

    # the alert rules are loaded, and every expression of the dashboard
    # parses ($__rate_interval and the instance variable as Grafana
    # replaces them)
    $r = api_get($pport, '/api/v1/rules');
    my @groups = map { $_->{name} } @{ $r->{data}{groups} // [] };
    is(join(' ', sort @groups), 'opamp-fleet opamp-server',
       'Prometheus loaded the alert rules, both groups');
    my @bad;
    for my $e (@exprs) {
        (my $q = $e) =~ s/\$__rate_interval/1m/g;
        $q =~ s/\$instance/.*/g;
        $q =~ s/\$__range/5m/g;
        my $r = query($pport, $q);
        push @bad, "$e: " . ($r->{error} // 'no answer')
            unless ($r->{status} // '') eq 'success';
    }
    is(join("\n", @bad), '', 'Prometheus parses every dashboard expression');

    stop_prometheus();
}

my $took = time - $START;
diag(sprintf 'took %.1f s', $took) if $ENV{TEST_VERBOSE};

$t->done;
done_testing;
