#!/usr/bin/perl

# Promises of docs/ about held WebSocket agents:
#
#   redis-schema.md: a WebSocket agent that only answers pings has its
#     last_seen_ms and expires_ms renewed (touch.lua) and stays live past
#     the expires_ms of its last message
#   operations.md: held agents count as Waiting in stub_status, not
#     Reading or Writing
#   directives.md / operations.md: auth_basic and auth_request run before
#     the WebSocket upgrade of an opamp location
#   operations.md: nginx -s quit closes every agent with 1001 and marks
#     it disconnected
#   admin-api.md: GET agents newest last_seen_ms first; connected=1 is
#     "live": connected and expires_ms in the future

use strict;
use warnings;

use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use IO::Socket::INET;
use IO::Select;
use MIME::Base64 qw(encode_base64);
use JSON::PP;
use Time::HiRes qw(time sleep);

use OpAMPTest;
use OpAMPFleet;

my $t = OpAMPTest->new;
$t->start_redis;
chmod 0755, $t->dir;
{
    open my $f, '>', $t->dir . '/htpasswd' or die;
    print $f "agent:{PLAIN}pw\n";
    close $f;
    chmod 0644, $t->dir . '/htpasswd';
}
$t->start_nginx('
        location = /ping {
            opamp;
            opamp_heartbeat_interval 1s;
            opamp_agent_timeout 3s;
        }
        location = /basic {
            auth_basic "agents";
            auth_basic_user_file htpasswd;
            opamp;
        }
        location = /authreq {
            auth_request /check;
            opamp;
        }
        location = /check {
            internal;
            if ($http_x_token = "good") {
                return 204;
            }
            return 403;
        }
        location = /status { stub_status; }
        location /admin/ { opamp_admin; }', workers => 1);

my $DESC = 'agent_description { identifying_attributes { key: '
           . '"service.name" value { string_value: "life" } } }';

sub msg {
    my ($uid, $text) = @_;
    return $t->a2s('instance_uid: "' . uid_escape($uid) . '" ' . $text);
}

sub redis_ms {
    my $tm = $t->redis('TIME');
    return $tm->[0] * 1000 + int($tm->[1] / 1000);
}

# --- touch: a quiet agent that answers pings stays live ---------------------

{
    my $u = random_uid();
    my $a = OpAMPFleet->connect_ws(port => $t->port, path => '/ping');
    $a->send_msg(msg($u, "sequence_num: 0 capabilities: 1 $DESC"));
    ok(defined $a->recv_msg(5), 'a WebSocket agent registered');
    my $h0 = $t->agent($u);
    is($h0->{expires_ms}, $h0->{last_seen_ms} + 3000,
       'expires_ms = last_seen_ms + opamp_agent_timeout');

    # it only answers pings (recv_msg pongs each), past its first lease
    my $renewed = $t->wait_for(sub {
        $a->recv_msg(0.1);
        my $h = $t->agent($u);
        ($h->{last_seen_ms} // 0) > $h0->{last_seen_ms};
    }, 10);
    ok($renewed, 'answering pings renews last_seen_ms');
    my $h1 = $t->agent($u);
    is($h1->{expires_ms}, $h1->{last_seen_ms} + 3000,
       'and expires_ms with it');
    is($h1->{sequence_num}, 0, 'without a message (sequence_num as it was)');
    ok($t->wait_for(sub {
           ($t->redis('ZSCORE', 'opamp:agents', uid_text($u)) // 0)
           >= $h1->{last_seen_ms} }, 5),
       'the fleet index is scored by the renewed last_seen_ms too');
    ok($t->wait_for(sub { $a->recv_msg(0.1); redis_ms() > $h0->{expires_ms} + 500 },
                    10), 'time passes the first lease');
    my $h2 = $t->agent($u);
    ok($h2->{connected} eq '1' && $h2->{expires_ms} > redis_ms(),
       'past its first expires_ms the agent is still live');
    ok(!$a->{closed}, 'and still connected (no agent timeout)');
    $a->close;
}

# --- stub_status: held agents are Waiting ----------------------------------

sub status {
    my ($s, $h, $b) = $t->http_post('', -method => 'GET', -path => '/status');
    my ($active) = $b =~ /Active connections:\s*(\d+)/;
    my ($rd, $wr, $wt) = $b =~ /Reading:\s*(\d+)\s+Writing:\s*(\d+)\s+Waiting:\s*(\d+)/;
    return { active => $active, reading => $rd, writing => $wr,
             waiting => $wt };
}

{
    my $base = status();
    my @a;
    for (1 .. 3) {
        my $u = random_uid();
        my $a = OpAMPFleet->connect_ws(port => $t->port);
        $a->send_msg(msg($u, "sequence_num: 0 capabilities: 1 $DESC"));
        $a->recv_msg(5) // die 'no answer';
        push @a, $a;
    }
    my $st = status();
    is($st->{active} - $base->{active}, 3, 'stub_status: three more active');
    is($st->{waiting} - $base->{waiting}, 3, 'all three count as Waiting');
    is($st->{reading} - $base->{reading}, 0, 'none as Reading');
    is($st->{writing} - $base->{writing}, 0, 'none as Writing');
    $_->close for @a;
    ok($t->wait_for(sub { my $n = status(); $n->{waiting} == $base->{waiting}
                          && $n->{active} == $base->{active} }, 5),
       'closed, they are counted no more');
}

# --- authentication before the upgrade ---------------------------------------

sub upgrade {
    my ($path, $extra) = @_;
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                  PeerPort => $t->port, Proto => 'tcp',
                                  Timeout => 5) or die;
    my $key = encode_base64('0123456789abcdef', '');
    syswrite($s, "GET $path HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                 . "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                 . "Sec-WebSocket-Key: $key\r\n$extra\r\n");
    my $resp = '';
    my $sel = IO::Select->new($s);
    while ($resp !~ /\r\n\r\n/ && $sel->can_read(5)) {
        sysread($s, $resp, 65536, length $resp) or last;
    }
    my ($code) = $resp =~ m{^HTTP/1\.1 (\d+)};
    return ($code // 0, $s);
}

{
    my ($c) = upgrade('/basic', '');
    is($c, 401, 'auth_basic on the opamp location: no credentials, 401 '
       . 'before any upgrade');
    ($c) = upgrade('/basic', 'Authorization: Basic '
                   . encode_base64('agent:bad', '') . "\r\n");
    is($c, 401, 'a wrong password: 401');
    my ($c2, $s) = upgrade('/basic', 'Authorization: Basic '
                           . encode_base64('agent:pw', '') . "\r\n");
    is($c2, 101, 'the right password: 101 Switching Protocols');
    close $s;
    ($c) = upgrade('/authreq', 'X-Token: bad' . "\r\n");
    is($c, 403, 'auth_request refusing: 403 before any upgrade');
    ($c2, $s) = upgrade('/authreq', 'X-Token: good' . "\r\n");
    is($c2, 101, 'auth_request allowing: 101');
    close $s;
}

# --- touch: not for an agent whose own heartbeats renew its lease -----------
#
# Heartbeats every 1.4 s: the server pings it after 1 s of silence, and the
# pong comes about 1 s after its last message, less than half of the agent
# timeout (3 s): its lease is renewed by its heartbeats alone, and Redis
# runs no touch.lua for it (Redis's SLOWLOG: touch.lua is the EVALSHA
# whose one key is the agent's hash).

{
    my $u = random_uid();
    my $key = $t->agent_key($u);
    my $a = OpAMPFleet->connect_ws(port => $t->port, path => '/ping');
    $a->send_msg(msg($u, "sequence_num: 0 capabilities: 1 $DESC"));
    ok(defined $a->recv_msg(5), 'a heartbeating agent registered');
    $t->redis('CONFIG', 'SET', 'slowlog-log-slower-than', 0);
    $t->redis('CONFIG', 'SET', 'slowlog-max-len', 100000);
    $t->redis('SLOWLOG', 'RESET');
    my ($pings, $seq) = (0, 0);
    for (1 .. 4) {
        my $until = time + 1.4;
        while (time < $until) {
            $a->recv_msg($until - time);
        }
        $seq++;
        $a->send_msg(msg($u, "sequence_num: $seq capabilities: 1"));
    }
    $a->recv_msg(1);
    my $log = $t->redis('SLOWLOG', 'GET', 100000);
    $t->redis('CONFIG', 'SET', 'slowlog-log-slower-than', 10000);
    my @touch = grep { my $c = $_->[3];
                       ($c->[0] // '') eq 'EVALSHA' && ($c->[2] // '') eq '1'
                       && ($c->[3] // '') eq $key } @$log;
    is(scalar @touch, 0, 'an agent whose heartbeats come within half the '
       . 'agent timeout is never touched, though it answers pings');
    # the worker answers some of them itself (opamp_heartbeat_recheck,
    # never longer than half the agent timeout): Redis holds the last or
    # the one before, and the lease they renewed
    my $h = $t->agent($u);
    ok($h->{sequence_num} == $seq || $h->{sequence_num} == $seq - 1,
       "its heartbeats were stored (sequence_num $h->{sequence_num} of "
       . "$seq)");
    ok($h->{expires_ms} > int(time * 1000), 'its lease lies ahead');
    $a->close;
    ok($t->wait_for(sub { ($t->agent($u)->{connected} // '') eq '0' }, 5),
       'disconnected');
    is($t->agent($u)->{sequence_num}, $seq,
       'and the last sequence_num stored when its connection ended');
}

# --- admin: newest first, connected=1 honours expires_ms ---------------------

my $json = JSON::PP->new;

sub admin {
    my ($path) = @_;
    my ($s, $h, $b) = $t->http_post('', -method => 'GET',
                                    -path => "/admin/$path");
    return eval { $json->decode($b) } // {};
}

{
    $t->redis('FLUSHALL');
    my @u = map { random_uid() } 1 .. 4;
    my $last = 0;
    for my $u (@u) {
        # each a later millisecond than the one before, on Redis's clock
        $t->wait_for(sub { redis_ms() > $last }, 5);
        $t->http_post(msg($u, "sequence_num: 0 capabilities: 1 $DESC"));
        $last = $t->agent($u)->{last_seen_ms};
    }
    my @scores = map { $t->redis('ZSCORE', 'opamp:agents', uid_text($_)) } @u;
    ok($scores[0] < $scores[1] && $scores[1] < $scores[2]
       && $scores[2] < $scores[3], 'four agents seen one after another');
    my $d = admin('agents');
    is_deeply([ map { $_->{instance_uid} } @{ $d->{agents} } ],
              [ map { uid_text($_) } reverse @u ],
              'GET agents: newest last_seen_ms first');
    $d = admin('agents?limit=2');
    is_deeply([ map { $_->{instance_uid} } @{ $d->{agents} } ],
              [ map { uid_text($_) } @u[3, 2] ],
              'the first page holds the newest');

    # a dead host: connected is still 1 but the lease ran out
    $t->redis('HSET', $t->agent_key($u[1]), expires_ms => redis_ms() - 1);
    $d = admin('agents?connected=1');
    is_deeply([ sort map { $_->{instance_uid} } @{ $d->{agents} } ],
              [ sort map { uid_text($_) } @u[0, 2, 3] ],
              'connected=1: an expired agent with connected 1 is not live');
    $d = admin('agents?connected=0');
    is_deeply([ map { $_->{instance_uid} } @{ $d->{agents} } ],
              [ uid_text($u[1]) ], 'connected=0: it is listed there');
    is($d->{agents}[0]{connected}, '1', 'with connected still 1');
    ok(exists $d->{agents}[0]{live} && !$d->{agents}[0]{live},
       'and live false');
    $d = admin('agents/' . uid_text($u[1]));
    ok(exists $d->{live} && !$d->{live}, 'GET agents/<uid>: live false too');
    $d = admin('agents/' . uid_text($u[0]));
    ok($d->{live}, 'and true for a live one');
}

# --- nginx -s quit: 1001, marked disconnected ---------------------------------

{
    my @u = map { random_uid() } 1 .. 2;
    my @a;
    for my $u (@u) {
        my $a = OpAMPFleet->connect_ws(port => $t->port);
        $a->send_msg(msg($u, "sequence_num: 0 capabilities: 1 $DESC"));
        $a->recv_msg(5);
        push @a, $a;
    }
    is(join(' ', map { $t->agent($_)->{connected} } @u), '1 1',
       'two agents held');
    my $cmd = $t->nginx_cmd('-c', $t->{conf}, '-s', 'quit');
    my $out = `$cmd 2>&1`;
    is($?, 0, 'nginx -s quit') or diag $out;
    for my $i (0, 1) {
        $a[$i]->recv_msg(10);
        is($a[$i]{closed}, 1001, "agent $i: closed with 1001");
    }
    ok($t->wait_for(sub {
           join(' ', map { $t->agent($_)->{connected} } @u) eq '0 0' }, 10),
       'both marked disconnected in Redis');
    ok($t->wait_for(sub { !kill 0, $t->nginx_pid }, 15), 'nginx exits');
}

$t->done;
done_testing;
