#!/usr/bin/perl

# Hostile input, as an attacker on the network sends it: deep nesting in
# every recursive field, decompression bombs of empty repeated fields,
# floods of tiny WebSocket fragments, partial frames then silence, header
# floods, large declared frame lengths with no body, invalid UTF-8, and an
# agent trying to fill Redis.  Each gets its error (400 / BAD_REQUEST /
# a close code) with a reason; the worker stays up (the same pid, no
# "exited on signal"), its memory stays bounded and returns, Redis holds
# nothing of the message, and an ordinary agent on the same worker is
# served throughout.
#
# Messages are built byte by byte here (a protobuf encoder of a few
# lines, independent of the module and of protoc, which refuses to make
# most of them), and what the module stores is decoded with protoc.

use strict;
use warnings;

use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use IO::Socket::INET;
use IO::Select;
use IO::Compress::Gzip qw(gzip $GzipError);
use JSON::PP;
use Time::HiRes qw(time sleep);

use OpAMPTest;
use OpAMPWire;
use OpAMPFleet;

my $t = OpAMPTest->new;
$t->start_redis;
$t->start_nginx('
        location = /small {
            opamp;
            opamp_max_message_size 8k;
            opamp_max_agent_state 4k;
        }
        location = /quick {
            opamp;
            opamp_heartbeat_interval 1s;
            opamp_agent_timeout 2s;
        }
        location /admin/ { opamp_admin; }', workers => 1,
    http => 'opamp_redis_timeout 60s;');

my ($worker) = $t->worker_pids;

# --- a protobuf encoder of our own ---------------------------------------

# vint, fld, fvar, kv: t/lib/OpAMPWire.pm

# AgentToServer: instance_uid, sequence_num, capabilities (ReportsStatus),
# then whatever else is given, already encoded
sub a2s {
    my ($uid, $seq, @rest) = @_;
    return fld(1, $uid) . fvar(2, $seq) . fvar(4, 1) . join('', @rest);
}

sub desc_with_value {
    my ($anyvalue) = @_;
    return fld(3, fld(1, fld(1, 'k') . fld(2, $anyvalue)));
}

# AnyValue nested $n times through array_value (5) or kvlist_value (6)
sub nested_anyvalue {
    my ($n, $via) = @_;
    my $v = fld(1, 'leaf');
    for (1 .. $n) {
        $v = $via eq 'array' ? fld(5, fld(1, $v))
                             : fld(6, fld(1, fld(1, 'k') . fld(2, $v)));
    }
    return $v;
}

# ComponentHealth nested $n times through component_health_map (6)
sub nested_health {
    my ($n) = @_;
    my $h = fvar(1, 1);
    for (1 .. $n) {
        $h = fvar(1, 1) . fld(6, fld(1, 'c') . fld(2, $h));
    }
    return fld(5, $h);
}

sub status_of { my ($ps) = @_; return (grep { /^\d+$/ } split /\n/, $ps)[0] }

sub worker_status {
    my ($field) = @_;
    open my $f, '<', "/proc/$worker/status" or return undef;
    local $/;
    my $s = <$f>;
    return $s =~ /^$field:\s+(\d+) kB/m ? $1 * 1024 : undef;
}

sub same_worker {
    my ($what) = @_;
    my @w = $t->worker_pids;
    is_deeply(\@w, [$worker], "$what: the same worker, still up");
    unlike($t->error_log, qr/exited on signal/, "$what: no worker died");
}

# the ordinary agent: connected throughout, answered after every attack
my $good = OpAMPFleet->connect_ws(port => $t->port);
my $good_uid = random_uid();
my $good_seq = 0;
$good->send_msg(a2s($good_uid, 0,
    fld(3, fld(1, fld(1, 'service.name') . fld(2, fld(1, 'good'))))));
ok(defined $good->recv_msg(5), 'the ordinary agent is answered');

sub good_served {
    my ($what) = @_;
    $good_seq++;
    # its health changes each time: a heartbeat alone could be answered
    # by the worker without Redis (opamp_heartbeat_recheck)
    $good->send_msg(a2s($good_uid, $good_seq,
                        fld(5, fvar(1, $good_seq % 2))));
    my $r = $good->recv_msg(5);
    ok(defined $r, "$what: the ordinary agent on the same worker is served");
    is($t->agent($good_uid)->{sequence_num}, $good_seq,
       "$what: and its state is stored");
}

sub post {
    my ($body, %h) = @_;
    my ($s, $hd, $b) = $t->http_post($body, %h);
    my $m = ($b // '') ne '' && ($hd->{'content-type'} // '')
            =~ /protobuf/ ? $t->s2a($b) : undef;
    return ($s, $m, $b);
}

# --- deep nesting: every recursive field -----------------------------------

for my $case (['array_value', nested_anyvalue(10000, 'array')],
              ['kvlist_value', nested_anyvalue(10000, 'kvlist')],
              ['component_health_map', nested_health(5000)])
{
    my ($name, $payload) = @$case;
    my $uid = random_uid();
    my $body = $name eq 'component_health_map'
               ? a2s($uid, 0, $payload) : a2s($uid, 0, desc_with_value($payload));
    my ($s, $m) = post($body);
    is($s, 400, "$name nested thousands deep over HTTP ("
       . length($body) . " bytes): 400");
    like($m->{error_response}{error_message} // '',
         qr/nested deeper than 100 levels/, "$name: the reason says why");
    is($t->redis('EXISTS', $t->agent_key($uid)), 0,
       "$name: nothing of it in Redis");
    same_worker("$name over HTTP");

    # the same on a WebSocket: BAD_REQUEST, and the connection goes on
    my $ws = OpAMPFleet->connect_ws(port => $t->port);
    $ws->send_msg($body);
    my $r = $ws->recv_msg(5);
    my $e = defined $r ? $t->s2a($r) : {};
    is($e->{error_response}{type}, 'ServerErrorResponseType_BadRequest',
       "$name over WebSocket: BAD_REQUEST");
    like($e->{error_response}{error_message} // '',
         qr/nested deeper than 100 levels/,
         "$name over WebSocket: the reason says why (the "
         . length($body) . "-byte frame arrived whole)");
    $ws->send_msg(a2s($uid, 0, fld(3, '')));
    ok(defined $ws->recv_msg(5), "$name: the connection goes on");
    $ws->close;
    same_worker("$name over WebSocket");
    good_served($name);
}

# legal depth (40 arrays: 84 levels of messages) is taken and stored as
# sent, and what is stored decodes with protoc
{
    my $uid = random_uid();
    my $inner = fld(1, fld(1, 'k') . fld(2, nested_anyvalue(40, 'array')));
    my ($s) = post(a2s($uid, 0, fld(3, $inner)));
    is($s, 200, 'nesting within the limit: 200');
    my $stored = $t->agent($uid)->{description} // '';
    is($stored, $inner, 'nesting within the limit: stored byte for byte');
    like($t->decode('AgentDescription', $stored), qr/string_value: "leaf"/,
         'and protoc decodes what is stored');
}

# --- decompression bomb of empty repeated fields ---------------------------

{
    # 1.9 million empty KeyValues: 3.8 MB, under opamp_max_message_size 4m
    my $uid = random_uid();
    my $plain = a2s($uid, 0, fld(3, "\x0a\x00" x 1_900_000));
    gzip(\$plain => \my $gz) or die $GzipError;
    my $hwm = worker_status('VmHWM');
    my $rss = worker_status('VmRSS');
    my ($s, $m) = post($gz, 'Content-Encoding' => 'gzip');
    is($s, 400, 'a gzip bomb of ' . length($gz) . ' bytes ('
       . length($plain) . ' inflated, 1.9 million empty KeyValues): 400');
    like($m->{error_response}{error_message} // '', qr/more than 65536 elements/,
         'the bomb: the reason says why');
    is($t->redis('EXISTS', $t->agent_key($uid)), 0, 'the bomb: nothing stored');
    my $grew = worker_status('VmHWM') - $hwm;
    cmp_ok($grew, '<=', 4 * length $plain,
           "the bomb: the worker's peak memory grew by at most 4 times the "
           . "inflated size (grew " . int($grew / 1024) . " KB)");
    SKIP: {
        # AddressSanitizer keeps freed memory in quarantine (256 MB),
        # valgrind's allocator holds freed blocks back too
        skip 'RSS under make test-asan or test-valgrind', 1
            if $ENV{TEST_NGINX_ASAN} || $ENV{TEST_NGINX_VALGRIND};
        cmp_ok(worker_status('VmRSS') - $rss, '<', 2 * 1024 * 1024,
               'the bomb: and its memory is given back');
    }
    same_worker('gzip bomb');

    # inflating past opamp_max_message_size stops there
    $plain = a2s($uid, 0, fld(3, "\x0a\x00" x 2_200_000));
    gzip(\$plain => \$gz) or die $GzipError;
    ($s) = post($gz, 'Content-Encoding' => 'gzip');
    is($s, 413, 'a gzip bomb inflating past opamp_max_message_size: 413');
    same_worker('gzip bomb past the limit');
    good_served('gzip bombs');
}

# --- invalid UTF-8 ----------------------------------------------------------

{
    my $uid = random_uid();
    my ($s, $m) = post(a2s($uid, 0,
        fld(3, fld(1, fld(1, 'k') . fld(2, fld(1, "bad \xff\xfe utf8"))))));
    is($s, 400, 'a string attribute with invalid UTF-8: 400');
    like($m->{error_response}{error_message} // '', qr/not valid UTF-8/,
         'invalid UTF-8: the reason says why');
    is($t->redis('EXISTS', $t->agent_key($uid)), 0,
       'invalid UTF-8: nothing stored');

    # whatever reaches Redis otherwise (a control plane writes it), the
    # admin API's JSON stays valid UTF-8
    my $u2 = random_uid();
    ($s) = post(a2s($u2, 0, fld(3, fld(1, fld(1, 'k') . fld(2, fld(1, 'v'))))));
    is($s, 200, 'an ordinary agent for the admin API');
    my $key = $t->agent_key($u2);
    $t->redis('HSET', $key, 'server_id', "host\xe2\x82");
    $t->redis('SET', $t->status_key($u2),
              fld(3, fld(2, fld(1, 'k') . fld(2, fld(1, "v\xc3\x28\xff")))
                     . fld(1, fld(1, 'b') . fld(2, fld(7, "\xff\xfe")))));
    my ($as, $ah, $ab) = $t->http_post('', -method => 'GET',
                                       -path => '/admin/agents');
    is($as, 200, 'GET agents with invalid UTF-8 in Redis: 200');
    my $list = eval { JSON::PP->new->utf8->decode($ab) };
    ok($list, 'GET agents: the page is valid UTF-8 JSON') or diag($@);
    my ($a) = grep { $_->{instance_uid} eq uid_text($u2) }
                   @{ $list->{agents} // [] };
    is($a->{attributes}{k}, "v\x{fffd}(\x{fffd}",
       'invalid bytes are shown as U+FFFD');
    ($as, $ah, $ab) = $t->http_post('', -method => 'GET',
                                    -path => '/admin/agents/' . uid_text($u2));
    ok(eval { JSON::PP->new->utf8->decode($ab) },
       'GET agents/<uid>: valid UTF-8 JSON') or diag($@);
}

# --- what is stored decodes ------------------------------------------------

{
    my $uid = random_uid();
    # custom_capabilities with an unknown field (99) of its own, as a
    # newer agent may send: stored as sent, so any decoder keeps it
    my $cc = fld(1, 'io.example.a') . fld(1, 'io.example.b')
             . vint(99 << 3) . vint(7);
    my $eff = fld(1, fld(1, fld(1, 'c.yaml') . fld(2, fld(1, 'x: 1'))));
    my ($s) = post(a2s($uid, 0, fld(3, fld(1, fld(1, 'k') . fld(2, fld(1, 'v')))),
                       fld(12, $cc), fld(6, $eff), nested_health(3)));
    is($s, 200, 'an agent with custom capabilities, effective config, health');
    my $h = $t->agent($uid);
    is($h->{custom_capabilities}, $cc,
       'custom_capabilities stored byte for byte (unknown field kept)');
    is($h->{effective_config}, $eff, 'effective_config stored byte for byte');
    for my $f (['description', 'AgentDescription'],
               ['custom_capabilities', 'CustomCapabilities'],
               ['effective_config', 'EffectiveConfig'],
               ['health', 'ComponentHealth'])
    {
        my $text = eval { $t->decode($f->[1], $h->{ $f->[0] }) };
        ok(defined $text && $text ne '', "protoc decodes the stored $f->[0]");
    }
    my ($as, $ah, $ab) = $t->http_post('', -method => 'GET',
                                       -path => '/admin/agents/' . uid_text($uid));
    my $j = JSON::PP->new->utf8->decode($ab);
    is_deeply($j->{custom_capabilities}{capabilities},
              ['io.example.a', 'io.example.b'],
              'the admin API shows the stored custom capabilities');
}

# a message field sent twice is merged, as protobuf merges: its bytes are
# joined, and a decoder sees both parts
{
    my $uid = random_uid();
    my $d1 = fld(1, fld(1, 'a') . fld(2, fld(1, 'one')));
    my $d2 = fld(2, fld(1, 'b') . fld(2, fld(1, 'two')));
    my ($s) = post(a2s($uid, 0, fld(3, $d1), fld(3, $d2)));
    is($s, 200, 'agent_description sent twice in one message');
    my $stored = $t->agent($uid)->{description} // '';
    is($stored, $d1 . $d2, 'stored as the two parts joined');
    my $text = $t->decode('AgentDescription', $stored);
    like($text, qr/string_value: "one".*string_value: "two"/s,
         'protoc decodes both parts');
    my ($as, $ah, $ab) = $t->http_post('', -method => 'GET',
                                       -path => '/admin/agents/'
                                                . uid_text($uid));
    my $view = eval { JSON::PP->new->utf8->decode($ab) } // {};
    is_deeply($view->{attributes}, { a => 'one', b => 'two' },
              'and the module read both (the attributes selectors see)');
}

# the same one level down, as protoc merges it: an attribute whose value
# comes twice, the second without a value set; one whose value comes twice
# with none set (protobuf-c alone refuses to merge that: 400 "not a valid
# protobuf message"); a oneof member that comes twice (merged: both
# arrays' values), and a oneof's members one after the other
{
    my $uid = random_uid();
    my $kv1 = fld(1, 'a') . fld(2, fld(1, 'one')) . fld(2, '');
    my $kv2 = fld(1, 'b') . fld(2, fld(5, fld(1, fld(1, 'x'))))
              . fld(2, fld(5, fld(1, fld(1, 'y'))));
    # within one value: an array, a string, an array: the last one wins
    my $kv3 = fld(1, 'c') . fld(2, fld(5, fld(1, fld(1, 'x'))) . fld(1, 's')
                                  . fld(5, fld(1, fld(1, 'z'))));
    # two values, neither with a value set
    my $kv4 = fld(1, 'd') . fld(2, '') . fld(2, fvar(99, 1));
    my $sent = fld(1, $kv1) . fld(1, $kv2) . fld(1, $kv3) . fld(1, $kv4);
    my ($s, $m) = post(a2s($uid, 0, fld(3, $sent)));
    is($s, 200, 'attributes whose value comes twice, one or both empty: 200')
        or diag(explain($m));
    my $stored = $t->agent($uid)->{description} // '';
    is($t->decode('AgentDescription', $stored),
       $t->decode('AgentDescription', $sent),
       'what is stored decodes (protoc) as what was sent');
    cmp_ok(length $stored, '<', length $sent,
           'stored merged: each value once');
    my ($as, $ah, $ab) = $t->http_post('', -method => 'GET',
                                       -path => '/admin/agents/'
                                                . uid_text($uid));
    my $view = eval { JSON::PP->new->utf8->decode($ab) } // {};
    is($view->{attributes}{a}, 'one',
       'the value set is the one the module reads');

    # the same unmerged in Redis (an older version stored it, or another
    # client wrote it): the admin API merges it as it reads
    $t->redis('SET', $t->status_key($uid), fld(3, $sent));
    ($as, $ah, $ab) = $t->http_post('', -method => 'GET',
                                    -path => '/admin/agents/' . uid_text($uid));
    $view = eval { JSON::PP->new->utf8->decode($ab) } // {};
    my %attr = map { $_->{key} => $_->{value} }
               @{ $view->{description}{identifying_attributes} // [] };
    is_deeply(\%attr, { a => { string_value => 'one' },
                        b => { array_value => { values => [
                                   { string_value => 'x' },
                                   { string_value => 'y' } ] } },
                        c => { array_value => { values => [
                                   { string_value => 'z' } ] } },
                        d => {} },
              'the admin API shows an unmerged description from Redis '
              . 'as protoc reads it')
        or diag($ab);
}

# --- what one agent can make Redis hold ------------------------------------

{
    my $uid = random_uid();
    my $desc = fld(3, fld(1, fld(1, 'k') . fld(2, fld(1, 'd' x 3000))));
    my ($s, $m) = post(a2s($uid, 0, $desc), -path => '/small');
    is($s, 200, 'opamp_max_agent_state 4k: a 3 KB description is stored');
    my $eff = fld(6, fld(1, fld(1, fld(1, 'c') . fld(2, fld(1, 'e' x 3000)))));
    ($s, $m) = post(a2s($uid, 1, $eff), -path => '/small');
    is($s, 400, 'then a 3 KB effective config (6 KB in all): 400');
    like($m->{error_response}{error_message} // '',
         qr/opamp_max_agent_state/, 'the reason names opamp_max_agent_state');
    my $h = $t->agent($uid);
    ok(!exists $h->{effective_config}, 'nothing of it is stored');
    is(length($h->{description} // ''), length($desc) - 3,
       'the earlier state is intact');
    is($h->{sequence_num}, 0, 'and its sequence not advanced');
    ($s, $m) = post(a2s($uid, 2), -path => '/small');
    is($s, 200, 'its next message: 200');
    ok(($m->{flags} // 0) & 1, 'and the agent is asked for its full state');

    # the other way round: the effective config is stored as shared
    # content (shared:config:<digest>, referred to by the agent's hash),
    # and still counts as the agent's own
    my $u3 = random_uid();
    ($s) = post(a2s($u3, 0, $eff), -path => '/small');
    is($s, 200, 'a 3 KB effective config is stored');
    ok(defined $t->hgetall($t->agent_key($u3))->{effective_config_ref},
       'as shared content');
    ($s, $m) = post(a2s($u3, 1, $desc), -path => '/small');
    is($s, 400, 'then a 3 KB description (6 KB in all, half of it shared '
       . 'content): 400');
    ok(!exists $t->agent($u3)->{description}, 'nothing of it is stored');

    # one message alone over the cap is refused in the worker
    my $u2 = random_uid();
    ($s, $m) = post(a2s($u2, 0, fld(3, fld(1, fld(1, 'k')
                    . fld(2, fld(1, 'x' x 5000))))), -path => '/small');
    is($s, 400, 'one message over opamp_max_agent_state: 400');
    is($t->redis('EXISTS', $t->agent_key($u2)), 0, 'and nothing stored');
    same_worker('agent state cap');
}

# --- WebSocket framing -------------------------------------------------------

sub raw_ws {
    my (%o) = @_;
    my $ws = OpAMPFleet->connect_ws(port => $t->port, %o);
    return $ws;
}

# a frame header that declares a large payload, and then nothing: the
# worker reserves nothing for it
{
    my @ws;
    my $vm = worker_status('VmSize');
    my $rss = worker_status('VmRSS');
    for (1 .. 50) {
        my $ws = raw_ws();
        # binary, FIN, masked, 64-bit length 4,000,000, mask, 4 bytes
        syswrite($ws->sock, "\x82\xff" . pack('Q>', 4_000_000) . "abcd"
                 . "\x00\x01\x02\x03");
        push @ws, $ws;
    }
    good_served('50 connections declaring 4 MB frames');
    my $grew = worker_status('VmSize') - $vm;
    cmp_ok($grew, '<', 20 * 1024 * 1024,
           '50 frames declaring 4 MB each, with 4 bytes sent: the worker '
           . 'reserved ' . int($grew / 1024) . ' KB, not 200 MB');
    SKIP: {
        skip 'RSS under make test-asan or test-valgrind', 1
            if $ENV{TEST_NGINX_ASAN} || $ENV{TEST_NGINX_VALGRIND};
        cmp_ok(worker_status('VmRSS') - $rss, '<', 10 * 1024 * 1024,
               'and holds little');
    }
    close $_->sock for @ws;

    # over the limit: closed at once with 1009
    my $ws = raw_ws(path => '/small');
    syswrite($ws->sock, "\x82\xff" . pack('Q>', 64 * 1024 * 1024) . "abcd");
    ok(!defined $ws->recv_msg(5), 'a frame declaring 64 MB on an 8k location');
    is($ws->{closed}, 1009, 'is closed with 1009');
    same_worker('large declared frames');
}

# a flood of tiny fragments: a message of 3,000 one-byte frames is taken;
# fragments past opamp_max_message_size close the connection with 1009
{
    my $uid = random_uid();
    my $inner = fld(1, fld(1, 'k') . fld(2, fld(1, 'f' x 2900)));
    my $msg = "\x00" . a2s($uid, 0, fld(3, $inner));
    my $ws = raw_ws();
    my @bytes = split //, $msg;
    my $out = '';
    for my $i (0 .. $#bytes) {
        my $op = $i == 0 ? 2 : 0;
        my $fin = $i == $#bytes ? 0x80 : 0;
        my $k = 'mask';
        $out .= chr($fin | $op) . chr(0x80 | 1) . $k . ($bytes[$i] ^ 'm');
    }
    syswrite($ws->sock, $out);
    my $r = $ws->recv_msg(10);
    ok(defined $r && !$t->s2a($r)->{error_response},
       'a message in ' . scalar(@bytes) . ' one-byte fragments is answered');
    is($t->agent($uid)->{description}, $inner, 'and stored whole');
    $ws->close;

    $ws = raw_ws(path => '/small');
    $out = chr(2) . chr(0x80 | 1) . 'mask' . ("\x00" ^ 'm');
    for (1 .. 9000) {
        $out .= chr(0) . chr(0x80 | 1) . 'mask' . ('a' ^ 'm');
    }
    syswrite($ws->sock, $out);
    ok(!defined $ws->recv_msg(5),
       '9,000 one-byte fragments on an 8k location');
    is($ws->{closed}, 1009, 'are closed with 1009');
    same_worker('fragment floods');
    good_served('fragment floods');
}

# part of a frame, then silence: the agent timeout closes it (2 s there)
{
    my $ws = raw_ws(path => '/quick');
    syswrite($ws->sock, "\x82\x85ab");
    my $t0 = time;

    # read without answering the server's pings (a pong would complete
    # the frame): frames until a close frame or EOF
    my ($buf, $code, @ops) = ('', undef);
    my $sel = IO::Select->new($ws->sock);
    while (!defined $code && time - $t0 < 10 && $sel->can_read(10)) {
        sysread($ws->sock, $buf, 65536, length $buf) or last;
        while (length $buf >= 2) {
            my ($b0, $b1) = unpack 'CC', $buf;
            my $len = $b1 & 0x7f;
            last if $len > 125 || length $buf < 2 + $len;
            push @ops, $b0 & 0x0f;
            $code = unpack 'n', substr($buf, 2, 2) if ($b0 & 0x0f) == 8;
            substr($buf, 0, 2 + $len) = '';
        }
    }
    my $took = time - $t0;
    ok(!grep({ $_ == 2 } @ops), 'half a frame header, then silence: no '
       . 'message comes back (pings: ' . scalar(grep { $_ == 9 } @ops) . ')');
    is($code, 1000, 'closed by the agent timeout (1000)');
    cmp_ok($took, '>=', 1.9, 'not before opamp_agent_timeout (2 s)');
    cmp_ok($took, '<', 6, 'nor long after it (took ' . sprintf('%.2f', $took)
           . ' s)');
}

# --- header floods ----------------------------------------------------------

{
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                  PeerPort => $t->port) or die;
    my $req = "POST /v1/opamp HTTP/1.1\r\nHost: x\r\n";
    $req .= "X-Flood-$_: " . ('h' x 4000) . "\r\n" for 1 .. 200;
    $req .= "Content-Length: 0\r\n\r\n";
    local $SIG{PIPE} = 'IGNORE';
    syswrite($s, $req);
    my $sel = IO::Select->new($s);
    my $answer = '';
    while ($sel->can_read(5)) {
        sysread($s, $answer, 65536, length $answer) or last;
    }
    like($answer, qr{^HTTP/1\.1 4\d\d}, 'a flood of 200 headers of 4 KB: 4xx');
    same_worker('header flood');
    good_served('header flood');
}

# --- Redis faults while agents come and go ---------------------------------

# Redis's receive queue on its side of the worker's connections: grows
# when the worker has sent a command (Redis stopped, nothing is read)
sub redis_inbound {
    my $port = sprintf '%04X', $t->redis_port;
    my $sum = 0;
    for my $f ('/proc/net/tcp', '/proc/net/tcp6') {
        open my $h, '<', $f or next;
        while (<$h>) {
            my @c = split;
            next unless ($c[1] // '') =~ /:$port$/;
            my (undef, $rx) = split /:/, $c[4];
            $sum += hex $rx;
        }
    }
    return $sum;
}

sub ws_settled {
    my $ws = raw_ws();
    my $uid = random_uid();
    $ws->send_msg(a2s($uid, 0, fld(3, fld(1, fld(1, 'k') . fld(2, fld(1, 'v'))))));
    $ws->recv_msg(5) // die "not answered\n";
    return { ws => $ws, uid => $uid, seq => 0 };
}

# a heartbeat batch out when the script cache is flushed, its agents
# gone before Redis answers NOSCRIPT (a reload closes the old worker's
# idle WebSocket connections; the old worker waits for Redis's answer
# before it exits): the retry must skip them (it read a NULL report and
# the worker died on signal 11)
{
    my @ags = map { ws_settled() } 1 .. 3;
    ok($t->wait_for(sub { !grep { ($t->redis('HGET',
                            $t->agent_key($_->{uid}), 'settled') // '') eq '' }
                          @ags }, 5),
       'NOSCRIPT: the agents are settled (their heartbeats take the short way)');
    $t->redis('SCRIPT', 'FLUSH');
    my $q0 = redis_inbound();
    kill 'STOP', $t->redis_pid;
    kill 'STOP', $worker;
    for my $ag (@ags) {
        $ag->{seq}++;
        $ag->{ws}->send_msg(a2s($ag->{uid}, $ag->{seq}));
    }
    kill 'CONT', $worker;
    ok($t->wait_for(sub { redis_inbound() > $q0 }, 30),
       'NOSCRIPT: the heartbeat batch went out to the stopped Redis');
    my $old = $worker;
    kill 'HUP', $t->nginx_pid;
    for my $ag (@ags, { ws => $good }) {
        $ag->{ws}->recv_msg(10);
    }
    is_deeply([ map { $_->{ws}{closed} } @ags ], [ 1001, 1001, 1001 ],
              'NOSCRIPT: a reload closes the agents while their batch is out');
    my $q1 = redis_inbound();
    close $_->{ws}->sock for @ags;
    ok($t->wait_for(sub { redis_inbound() > $q1 }, 30),
       'NOSCRIPT: and their sessions end (their disconnects go out)');
    kill 'CONT', $t->redis_pid;
    ok($t->wait_for(sub { !kill 0, $old }, 15),
       'NOSCRIPT: the old worker gets its answer and exits');
    unlike($t->error_log, qr/exited on signal/,
           'NOSCRIPT: it exits, it does not die');
    ok($t->wait_for(sub { my @w = $t->worker_pids;
                          @w == 1 && $t->workers_ready(1) }, 15),
       'the new worker is ready');
    ($worker) = $t->worker_pids;

    # the ordinary agent comes back to the new worker
    $good = OpAMPFleet->connect_ws(port => $t->port);
    $good_seq++;
    # its health changes each time: a heartbeat alone could be answered
    # by the worker without Redis (opamp_heartbeat_recheck)
    $good->send_msg(a2s($good_uid, $good_seq,
                        fld(5, fvar(1, $good_seq % 2))));
    ok(defined $good->recv_msg(5), 'the ordinary agent is back');
    good_served('NOSCRIPT of a heartbeat batch whose agents left');
}

# a config check batch out when the script cache is flushed, an agent gone
# before Redis answers NOSCRIPT: the others still get the config
{
    my ($a, $b) = (ws_settled(), ws_settled());
    # AcceptsRemoteConfig: ask again with the capability
    for my $ag ($a, $b) {
        $ag->{seq}++;
        $ag->{ws}->send_msg(a2s($ag->{uid}, $ag->{seq}) . fvar(4, 3));
        $ag->{ws}->recv_msg(5);
    }
    $t->redis('SCRIPT', 'FLUSH');
    kill 'STOP', $worker;
    my ($s) = $t->http_post('{"files": {"c.yaml": {"body": "x: 2\n"}}}',
                            -method => 'PUT',
                            -path => '/admin/configs/groups/all');
    my $q0 = redis_inbound();
    kill 'STOP', $t->redis_pid;
    kill 'CONT', $worker;
    my $q1;
    ok($t->wait_for(sub { ($q1 = redis_inbound()) > $q0 }, 30),
       'check NOSCRIPT: the config check went out to the stopped Redis');
    close $a->{ws}->sock;
    ok($t->wait_for(sub { redis_inbound() > $q1 }, 30),
       'check NOSCRIPT: one agent left while it was out');
    kill 'CONT', $t->redis_pid;
    my $r = $b->{ws}->recv_msg(10);
    my $m = defined $r ? $t->s2a($r) : {};
    ok($m->{remote_config}, 'check NOSCRIPT: the agent that stayed gets the '
       . 'config');
    same_worker('NOSCRIPT after an agent left a config check');
    $b->{ws}->close;
}

# a plain HTTP report out when the script cache is flushed and its client
# gone: the worker stays, the next agent is served
{
    $t->redis('SCRIPT', 'FLUSH');
    my $q0 = redis_inbound();
    kill 'STOP', $t->redis_pid;
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                  PeerPort => $t->port) or die;
    my $body = a2s(random_uid(), 0, fld(3, ''));
    syswrite($s, "POST /v1/opamp HTTP/1.1\r\nHost: x\r\n"
             . "Content-Type: application/x-protobuf\r\n"
             . 'Content-Length: ' . length($body) . "\r\n\r\n$body");
    ok($t->wait_for(sub { redis_inbound() > $q0 }, 30),
       'HTTP NOSCRIPT: the report went out to the stopped Redis');
    close $s;
    kill 'CONT', $t->redis_pid;
    my ($st) = post(a2s(random_uid(), 0, fld(3, '')));
    is($st, 200, 'HTTP NOSCRIPT: the next agent is served');
    same_worker('NOSCRIPT of an HTTP report whose client left');
    good_served('Redis faults');
}

# --- admin API: the most attribute filters, and one more -------------------

{
    my $q = join '&', map { "attr=k$_=v$_" } 1 .. 16;
    my ($s, $h, $b) = $t->http_post('', -method => 'GET',
                                    -path => "/admin/agents?$q");
    is($s, 200, 'GET agents with 16 attr filters: 200');
    ok(eval { decode_json($b) }, 'with a JSON answer');
    ($s, $h, $b) = $t->http_post('', -method => 'GET',
                                 -path => "/admin/agents?$q&attr=k17=v17");
    is($s, 400, 'with 17: 400');
    like($b, qr/too many attr filters/, 'which says why');
    same_worker('attr filters');
}

# --- a reply that cannot be built (fault injection builds only) ------------

SKIP: {
    open my $so, '<:raw', $t->module or die;
    local $/;
    my $bin = <$so>;
    skip 'the module is not built with -DNGX_HTTP_OPAMP_FAULTS=1 '
         . '(make test-asan builds it so)', 3
        unless index($bin, 'OPAMP_FAULTS') >= 0;

    my $f = OpAMPTest->new(redis_port => $t->redis_port);
    $ENV{OPAMP_FAULTS} = 'http_reply';
    $f->start_nginx('', workers => 1, main => 'env OPAMP_FAULTS;');
    delete $ENV{OPAMP_FAULTS};
    my $t0 = time;
    my ($s) = $f->http_post(a2s(random_uid(), 0, fld(3, '')), -timeout => 10);
    is($s, 500, 'a reply that cannot be built: 500');
    cmp_ok(time - $t0, '<', 5, 'at once, not after a timeout');
    my ($s2) = $f->http_post('garbage', -timeout => 10);
    is($s2, 500, 'and so is an error reply that cannot be built');
    $f->done;
}

$good->close;
$t->done;
done_testing;
