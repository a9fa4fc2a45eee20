#!/usr/bin/perl

# Content that many agents report alike is stored once in Redis
# (docs/redis-schema.md, "Shared content"): a build's available components
# under the hash the agents give them, an effective config under the SHA1
# of its bytes, each with a count of the agents that refer to it; the
# agent hash holds <field>_ref.  The agents here send what a Collector
# under the OpAMP supervisor sends (t/lib/OpAMPCollector.pm, ~40 KB).

use strict;
use warnings;

use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use JSON::PP;
use Digest::SHA qw(sha1_hex);

use OpAMPTest;
use OpAMPCollector;
use Compress::Zlib ();

my $N = 60;
my $P = 'opamp:';

my $t = OpAMPTest->new;
$t->start_redis;
$t->start_nginx('
        location /admin/ { opamp_admin; }', workers => 1);

sub used_memory { ($t->redis('INFO', 'memory') =~ /used_memory:(\d+)/)[0] }

sub shared_keys {
    my ($kind) = @_;
    return sort @{ $t->redis('KEYS', "${P}shared:$kind:*") };
}

sub report {
    my ($uid, %o) = @_;
    my ($s, $h, $b) = $t->http_post($t->a2s(OpAMPCollector::full_status(
                                             uid => $uid, %o)));
    return ($s, $b ne '' ? $t->s2a($b) : {});
}

my $used0 = used_memory();
my (@uids, $len);
for my $i (1 .. $N) {
    my $uid = random_uid();
    my $text = OpAMPCollector::full_status(uid => $uid, host => "host$i",
                                           build => 1 + $i % 2,
                                           config => 1 + $i % 2);
    my $msg = $t->a2s($text);
    $len = length $msg;
    my ($s) = $t->http_post($msg);
    is($s, 200, "collector $i ($len bytes of full status): 200")
        if $i == 1 || $i == $N;
    push @uids, $uid;
}
my $per = (used_memory() - $used0) / $N;
diag(sprintf 'Redis per collector-sized agent (%d B of status, %d agents, '
     . '2 builds, 2 configs): %.0f B', $len, $N, $per);

my @ck = shared_keys('components');
my @ek = shared_keys('config');
is(scalar @ck, 2, 'two builds: two component lists in Redis');
is(scalar @ek, 2, 'two configs: two effective configs in Redis');
my $refs = 0;
$refs += $t->redis('HGET', $_, 'refs') for @ck;
is($refs, $N, "their references count the $N agents");
$refs = 0;
$refs += $t->redis('HGET', $_, 'refs') for @ek;
is($refs, $N, 'and so do the configs\'');

my $raw = $t->hgetall($t->agent_key($uids[0]));
ok(!exists $raw->{available_components} && !exists $raw->{effective_config},
   'the agent hash holds no copy of either');
like($raw->{available_components_ref} // '', qr/^[0-9a-f]{64}$/,
     'but a reference to the component list: its hash in hex');
my $eff = $t->redis('HGET', "${P}shared:config:$raw->{effective_config_ref}",
                    'data');
is($raw->{effective_config_ref}, sha1_hex($eff),
   'and to the effective config: the SHA1 of its bytes');
like($t->decode('EffectiveConfig', $eff), qr/timeout: 2s/,
     'protoc decodes the shared effective config: the agent\'s own');
like($t->decode('AvailableComponents', $t->agent($uids[0])
                                       ->{available_components}),
     qr/key: "rece070"/, 'and its component list (190 components)');
my ($hash, $status, $shared) = (0, 0, 0);
$hash += $t->redis('MEMORY', 'USAGE', $t->agent_key($_), 'SAMPLES', 0)
    for @uids;
$status += $t->redis('MEMORY', 'USAGE', $t->status_key($_), 'SAMPLES', 0)
    for @uids;
$shared += $t->redis('MEMORY', 'USAGE', $_, 'SAMPLES', 0) for @ck, @ek;
diag(sprintf 'MEMORY USAGE: agent hash %.0f B and status %.0f B on average, '
     . 'shared content %d B in all', $hash / $N, $status / $N, $shared);
is(scalar(grep { $t->redis('OBJECT', 'ENCODING', $t->agent_key($_))
                 ne 'listpack' } @uids), 0,
   'every agent hash holds small values only: Redis keeps it compact '
   . '(listpack)');
cmp_ok(($hash + $status) / $N, '<', 1800, 'what is an agent\'s own in Redis '
       . '(hash and status) is below 1,800 B (a copy each was 39 KB)');

# the status string: protobuf fields numbered as in AgentToServer; health
# compressed (zlib after a byte 0), the description as the agent sent it
{
    my $st = $t->redis('GET', $t->status_key($uids[0]));
    like($t->decode_raw($st), qr/^3 \{/m,
         'protoc --decode_raw reads the status string: field 3 first');
    my $f = OpAMPTest::status_fields($st);
    like($t->decode('AgentDescription', $f->{description}),
         qr/key: "host.name"\s+value \{\s+string_value: "host1"/,
         'the description as sent (protoc decodes it)');
    is(substr($f->{health}, 0, 1), "\0", 'health stored compressed');
    my $plain = Compress::Zlib::uncompress(substr($f->{health}, 1));
    like($t->decode('ComponentHealth', $plain // ''),
         qr/key: "exporter:otlphttp"/,
         'zlib inflates it to the health tree (protoc decodes it)');
    cmp_ok(length $f->{health}, '<', length($plain // '') / 2,
           'at less than half its size');
}
cmp_ok($shared, '<', 2 * $len + 2 * 8192,
       'the shared content is about one copy per build and config');

# the admin API shows an agent's full state as before
my ($as, $ah, $ab) = $t->http_post('', -method => 'GET',
                                   -path => '/admin/agents/' . uid_text($uids[1]));
my $j = decode_json($ab);
like($j->{effective_config}{config_map}{config_map}{''}{body} // '',
     qr/timeout: 1s/, 'GET agents/<uid>: the shared effective config');
ok($j->{available_components}{components}{receivers},
   'GET agents/<uid>: the shared component list');

# an agent that moves to another config drops its reference; the last
# agent to leave a content deletes it
my $moved = $uids[1];                  # config 1 -> 3
my ($s) = report($moved, seq => 1, host => 'host2', build => 2, config => 3);
is($s, 200, 'an agent reports a new effective config');
@ek = shared_keys('config');
is(scalar @ek, 3, 'a third config is stored');
my %r = map { $_ => $t->redis('HGET', $_, 'refs') } @ek;
is_deeply([ sort { $a <=> $b } values %r ], [ 1, $N / 2 - 1, $N / 2 ],
          'its old config lost one reference, the new one has one');
($s) = report($moved, seq => 2, host => 'host2', build => 2, config => 1);
@ek = shared_keys('config');
is(scalar @ek, 2, 'when it goes back, the config only it used is deleted');

# a new agent of a known build sends the components' hash only: it is not
# asked for the list, and refers to the one stored
{
    my $uid = random_uid();
    my $text = OpAMPCollector::full_status(uid => $uid, host => 'h-new',
                                           build => 1, config => 1);
    my ($hash) = $text =~ /(hash: "[^"]*") }$/;
    $text =~ s/available_components \{.*\}$/available_components { $hash }/s;
    my ($st, $hd, $b) = $t->http_post($t->a2s($text));
    my $m = $t->s2a($b);
    is($st, 200, 'a new agent of a known build, components by hash only');
    ok(!(($m->{flags} // 0) & 2), 'is not asked for its component list');
    like($t->decode('AvailableComponents',
                    $t->agent($uid)->{available_components} // ''),
         qr/key: "rece070"/, 'and has the list of its build');

    # an unknown build's hash alone: asked for the list
    my $u2 = random_uid();
    ($st, $hd, $b) = $t->http_post($t->a2s('instance_uid: "'
        . uid_escape($u2) . '" sequence_num: 0 capabilities: '
        . $OpAMPCollector::CAPABILITIES . ' agent_description {} '
        . 'available_components { hash: "' . ('\\001' x 32) . '" }'));
    $m = $t->s2a($b);
    ok((($m->{flags} // 0) & 2), 'an unknown build\'s hash alone: asked for '
       . 'the list (ReportAvailableComponents)');
}

# a small effective config stays in the agent's own hash
{
    my $uid = random_uid();
    my ($st) = $t->http_post($t->a2s('instance_uid: "' . uid_escape($uid)
        . '" sequence_num: 0 capabilities: 5 agent_description {} '
        . 'effective_config { config_map { config_map { key: "" value { '
        . 'body: "a: 1" } } } }'));
    is($st, 200, 'an agent with a tiny effective config');
    my $h = $t->agent($uid);
    ok(exists $h->{effective_config} && !exists $h->{effective_config_ref},
       'keeps it with its own status (sharing it would cost more than it '
       . 'saves)');
}

# upgrade: an agent hash of schema 2 (status fields, attributes and
# instance_uid in the hash, long values: Redis's larger encoding) moves to
# this layout at the agent's next message, as it is: no full state asked
{
    my $uid = random_uid();
    my $key = $t->agent_key($uid);
    my $desc = $t->encode('AgentDescription',
        'identifying_attributes { key: "service.name" value { '
        . 'string_value: "legacy" } }');
    my $health = $t->encode('ComponentHealth', OpAMPCollector::health('old')
                            =~ s/^health \{(.*)\}\s*$/$1/sr);
    my $now = int(time * 1000);
    $t->redis('HSET', $key, schema => 2, instance_uid => uid_text($uid),
              sequence_num => 4, capabilities => 0x801,
              description => $desc, health => $health, healthy => 1,
              attributes => '{"service.name":"legacy"}',
              first_seen_ms => $now - 60000, last_seen_ms => $now - 1000,
              expires_ms => $now + 89000, connected => 1, conn => 'http',
              transport => 'http', settled => '0 0123456789abcdef');
    $t->redis('ZADD', "${P}agents", $now - 1000, uid_text($uid));
    is($t->redis('OBJECT', 'ENCODING', $key), 'hashtable',
       'a schema 2 hash with its long values');
    my ($st, $h, $b) = $t->http_post($t->a2s('instance_uid: "'
        . uid_escape($uid) . '" sequence_num: 5 capabilities: 2049'));
    is($st, 200, 'its next heartbeat: 200');
    ok(!(($t->s2a($b)->{flags} // 0) & 1), 'not asked for its full state');
    my $raw = $t->hgetall($key);
    is($raw->{schema}, 3, 'the hash is of schema 3 now');
    ok(!grep({ exists $raw->{$_} } qw(description health attributes
                                      instance_uid)),
       'with no status fields, attributes or instance_uid');
    is($raw->{first_seen_ms}, $now - 60000, 'and its other fields kept');
    is($t->redis('OBJECT', 'ENCODING', $key), 'listpack',
       'written anew: Redis keeps it compact again');
    my $a = $t->agent($uid);
    is($a->{description}, $desc, 'the description moved to the status string');
    is($a->{health}, $health, 'and the health, as it was (not compressed)');
    my ($as, $ah, $ab) = $t->http_post('', -method => 'GET',
                                       -path => '/admin/agents/'
                                                . uid_text($uid));
    my $j = decode_json($ab);
    is($j->{attributes}{'service.name'}, 'legacy',
       'GET agents/<uid>: its attributes, read from the description');
    ok($j->{health}{component_health_map}{'pipeline:logs'},
       'GET agents/<uid>: its health tree');
}

# an agent whose description is not stored (a control plane deleted its
# status string, or Redis lost it) is asked for its full state by its
# next heartbeat; with the string there, the same heartbeat is not
{
    my $uid = random_uid();
    my ($s) = report($uid, seq => 0, host => 'h-desc');
    is($s, 200, 'a collector reports its full status');
    my $beat = sub {
        my ($seq) = @_;
        my ($st, $h, $b) = $t->http_post($t->a2s('instance_uid: "'
            . uid_escape($uid) . "\" sequence_num: $seq capabilities: "
            . $OpAMPCollector::CAPABILITIES));
        return (($t->s2a($b)->{flags} // 0) & 1);
    };
    ok(!$beat->(1), 'its heartbeat in sequence: no ReportFullState');
    $t->redis('DEL', $t->status_key($uid));
    ok($beat->(2), 'its status string gone: the next heartbeat is asked for '
       . 'the full state');
}

$t->done;
done_testing;
