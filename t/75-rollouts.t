#!/usr/bin/perl

# Staged rollouts (docs/admin-api.md, "Staged rollouts") on two nginx
# instances sharing one Redis, with a fleet of simulated WebSocket agents
# (1,000 unless TEST_ROLLOUT_AGENTS says otherwise) that apply what they
# are offered, or fail it when the test says so.  What each agent receives
# is decoded with protoc (an independent codec); the plan's order is the
# rank of the uid (the first 32 bits of the SHA-1 of its canonical text),
# computed here independently.  Covered: bad plans; a dry run; a clean
# rollout in stage order with the soak kept, both nginx reloaded in the
# middle of it; a rollout whose second stage fails, stopped and rolled back
# by itself, the agents beyond it never offered the new version; a gate
# that pauses, resume, advance, the failed agents not offered the version
# again; an agent that connects mid-rollout; abort; plain PUTs refused
# while a rollout runs.

use strict;
use warnings;

use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use JSON::PP;
use POSIX qw(ceil);
use Time::HiRes qw(time sleep);

use OpAMPTest;
use OpAMPFleet;
use OpAMPAgents;

my $P = 'opamp:';
my $N = $ENV{TEST_ROLLOUT_AGENTS} // 1000;

my $ta = OpAMPTest->new;
$ta->start_redis;
$ta->redis('CONFIG', 'SET', 'slowlog-max-len', 100000);
my $tb = OpAMPTest->new(redis_port => $ta->redis_port);
my $admin = '
        location /admin/ { opamp_admin; opamp_admin_author $http_x_who; }';
$ta->start_nginx($admin, workers => 2, http => 'opamp_server_id host-a;');
$tb->start_nginx($admin, workers => 2, http => 'opamp_server_id host-b;');

my $json = JSON::PP->new->canonical;

sub api {
    my ($method, $path, $body, $t) = @_;
    my ($st, $h, $b) = ($t // $ta)->http_post($body // '', -method => $method,
                                              -path => "/admin/$path",
                                              'Content-Type' => 'application/json',
                                              'X-Who' => 'alice');
    return ($st, eval { decode_json($b // '') } // { raw => $b });
}

sub hash_of { OpAMPFleet::config_hash('c.yaml' => [ $_[0], '' ]) }

sub group_body {
    my ($body, $plan) = @_;
    my %b = (selector => 'service.name=web',
             files => { 'c.yaml' => { body => $body } });
    $b{rollout} = $plan if $plan;
    return $json->encode(\%b);
}


# --- the simulated fleet (t/lib/OpAMPAgents.pm) ------------------------------

my $HELLO = 'capabilities: 3 agent_description { identifying_attributes { '
            . 'key: "service.name" value { string_value: "web" } } }';

my $fleet = OpAMPAgents->new(t => $ta, hello => $HELLO);
my $agents = $fleet->agents;
my $fails = $fleet->fails;

sub rank { OpAMPAgents::rank(@_) }
sub new_agent { $fleet->add(@_) }
sub pump { $fleet->pump(@_) }
sub field { $fleet->field(@_) }
sub all_run { $fleet->all_run(@_) }
sub laggards { $fleet->laggards(@_) }
sub received { OpAMPAgents::received(@_) }

sub gauge { $ta->redis('HGET', "${P}fleet:gauges", $_[0]) // 0 }

# --- a group and its fleet --------------------------------------------------

my $hA = hash_of('A');
my ($st, $r) = api('PUT', 'configs/groups/web', group_body('A'));
is($st, 200, 'group web, version 1');

for my $i (1 .. $N) {
    new_agent($i % 2 ? $ta : $tb);
}
ok(pump(120, all_run($hA)), "$N agents on two nginx run version 1");
is(gauge('version:web@' . substr($hA, 0, 16)), $N,
   'the gauges count them by the version they are owed');
is($ta->redis('ZCARD', "${P}group_members:web"), $N,
   'the group\'s agents are indexed by rank');

my @by_rank = sort { $a->{rank} <=> $b->{rank} } @$agents;

# --- plans refused, nothing written ------------------------------------------

my %bad = (
    'stages out of order' => [ { stages => [ '50%', '10%', '100%' ] },
                               qr/stages out of order/ ],
    'a count after a share' => [ { stages => [ '10%', 5, '100%' ] },
                                 qr/counts of agents come before shares/ ],
    'a fraction over 1' => [ { stages => [ 0.5, 1.5 ] },
                             qr/at most 1/ ],
    'an unknown gate' => [ { stages => [ '100%' ], gates => { latency => 1 } },
                           qr/unknown gate/ ],
    'no 100% at the end' => [ { stages => [ 1, '50%' ] },
                              qr/last stage must be "100%"/ ],
    'an unknown member' => [ { stages => [ '100%' ], speed => 1 },
                             qr/unknown member of "rollout"/ ],
    'a bad on_gate' => [ { stages => [ '100%' ], on_gate => 'panic' },
                         qr/on_gate/ ],
    'no stages' => [ { soak_s => 5 }, qr/"stages" must be an array/ ],
);
for my $what (sort keys %bad) {
    my ($plan, $re) = @{ $bad{$what} };
    ($st, $r) = api('PUT', 'configs/groups/web', group_body('X', $plan));
    is($st, 400, "$what: 400");
    like($r->{error} // '', $re, "$what: the reason says why");
}
($st, $r) = api('PUT', 'configs/groups/web',
                $json->encode({ selector => 'service.name=other',
                                files => { 'c.yaml' => { body => 'X' } },
                                rollout => { stages => [ '100%' ] } }));
is($st, 400, 'a rollout that changes the selector: 400');
like($r->{error} // '', qr/changes files only/, 'the reason says why');
($st, $r) = api('PUT', 'configs/groups/nope',
                group_body('X', { stages => [ '100%' ] }));
is($st, 404, 'a rollout of a group that does not exist: 404');
($st, $r) = api('PUT', 'configs/groups/web',
                group_body('A', { stages => [ '100%' ] }));
is($st, 409, 'a rollout of the config the group has: 409');
is($ta->redis('HGET', "${P}versions:group:web", 'last'), 1,
   'no version was made by refused plans');
is($ta->redis('EXISTS', "${P}rollout:group:web"), 0, 'nor a rollout');

# --- a dry run -----------------------------------------------------------------

my $PLAN = { stages => [ 1, '10%', '50%', '100%' ], soak_s => 2,
             gates => { failed => '5%' }, on_gate => 'rollback' };
($st, $r) = api('PUT', 'configs/groups/web?dry_run=1', group_body('B', $PLAN));
is($st, 200, 'a dry run');
is_deeply($r, { dry_run => JSON::PP::true, agents => $N,
                stages => [ 1, ceil($N / 10), ceil($N / 2), $N ] },
          'it says how many agents each stage would reach');
is($ta->redis('HGET', "${P}versions:group:web", 'last'), 1,
   'and changes nothing');
# a share is rounded up: a stage of 0.15% of 1,000 agents is 2 of them
($st, $r) = api('PUT', 'configs/groups/web?dry_run=1', group_body('B',
                { stages => [ 0.0015, '33.33%', '100%' ] }));
is_deeply($r->{stages}, [ ceil($N * 0.0015), ceil($N * 0.3333), $N ],
          'a dry run rounds a share of the agents up');

# --- a clean rollout, both nginx reloaded in the middle ----------------------

my $hB = hash_of('B');
($st, $r) = api('PUT', 'configs/groups/web', group_body('B', $PLAN));
is($st, 200, 'a staged rollout of version 2 starts');
is($r->{version}, 2, 'as version 2');
is($r->{rollout}{stage_agents}, 1, 'its first stage reaches one agent');
is($r->{config_hash}, $hB, 'the new config\'s hash');

($st) = api('PUT', 'configs/groups/web', group_body('Z'));
is($st, 409, 'a plain PUT while the rollout runs: 409');

sub rollout { (api('GET', 'rollouts/web'))[1] }

ok(pump(30, sub { (rollout()->{stage} // 0) >= 3 }),
   'the rollout reaches its third stage');
ok($ta->reload(workers => 2), 'nginx a reloaded mid-rollout');
ok($tb->reload(workers => 2), 'nginx b reloaded mid-rollout');
# Redis's script cache flushed mid-rollout: the timer's EVALSHA finds no
# script, and its next step sends the source
$ta->redis('SCRIPT', 'FLUSH');
ok(pump(120, sub { (rollout()->{state} // '') eq 'done' }),
   'the rollout ends: done');
ok(pump(60, all_run($hB)), 'every agent runs version 2') or laggards($hB);

$r = rollout();
is($r->{state}, 'done', 'state done');
is($r->{stage}, 4, 'after its four stages');
is($r->{author}, 'alice', 'by who started it');
is_deeply($r->{stages}, [ 1, '10%', '50%', '100%' ], 'the plan\'s stages');
is_deeply($r->{soak_s}, [ 2, 2, 2, 2 ], 'and soak times');
($st, my $g) = api('GET', 'configs/groups/web');
is($g->{config_hash}, $hB, 'the group has version 2 now');
is($g->{version}, 2, 'as its version');
is($ta->redis('ZCARD', "${P}rollouts"), 0, 'no rollout is left running');

# the stages in rank order: stage k's agents all received version 2 before
# any agent of a later stage, and a stage began no sooner than the soak
# time after the one before
my @bound = (1, ceil($N / 10), ceil($N / 2), $N);
my ($first, $last) = $fleet->stage_times($hB, \@bound);
my @first = @$first;
my @last = @$last;
is(scalar(grep { received($_, $hB) >= 1 } @$agents), $N,
   'every agent received version 2');
for my $k (1 .. 3) {
    ok($last[$k - 1] < $first[$k],
       "stage ${k}'s agents received it before stage " . ($k + 1) . "'s");
    cmp_ok($first[$k] - $first[$k - 1], '>=', 2 - 0.25,
           'stage ' . ($k + 1) . ' began after the soak time of stage '
           . $k);
}
ok((grep { $_->{reconnects} } @$agents) > 0,
   'agents reconnected after the reloads');

# --- a version that fails: stopped and rolled back by itself -------------------

my $hC = hash_of('C');
# the canary applies it; of the second stage, every third agent fails it
$fails->{$hC} = { map { ($by_rank[$_]{uid} => 1) }
                grep { $_ % 3 == 0 } 1 .. $bound[1] - 1 };
$ta->redis('CONFIG', 'SET', 'slowlog-log-slower-than', 0);
$ta->redis('SLOWLOG', 'RESET');
($st, $r) = api('PUT', 'configs/groups/web', group_body('C', $PLAN));
is($st, 200, 'a staged rollout of version 3 starts');
ok(pump(60, sub { (rollout()->{state} // '') eq 'rolled_back' }),
   'a gate stops it and rolls it back');
$r = rollout();
is($r->{stage}, 2, 'at the stage whose agents failed it');
like($r->{reason}, qr/^gate failed: \d+ of the \d+ agents reached/,
     'the reason names the gate');
is($r->{counts}{reached}, $bound[1],
   'its counts, kept from the end: the agents of the two stages reached');
cmp_ok($r->{counts}{failed}, '>', 0.05 * $bound[1],
       'more of them failed than the gate allows');
# the workers decided each stage for the agents they hold: Redis ran no
# per-agent check (check.lua: EVALSHA with config_version and groups as
# its two keys) for it
my $checks = grep {
    my $a = $_->[3];
    ($a->[0] // '') eq 'EVALSHA' && ($a->[2] // '') eq '2'
        && ($a->[3] // '') eq "${P}config_version"
        && ($a->[4] // '') eq "${P}groups"
} @{ $ta->redis('SLOWLOG', 'GET', 100000) };
is($checks, 0, 'the workers placed the agents in the stages themselves');
$ta->redis('CONFIG', 'SET', 'slowlog-log-slower-than', 10000);
ok(pump(60, all_run($hB)), 'every agent runs version 2 again')
    or laggards($hB);
my @beyond = @by_rank[$bound[1] .. $#by_rank];
is(scalar(grep { received($_, $hC) } @beyond), 0,
   'no agent beyond the second stage was offered version 3');
my @updated = grep { received($_, $hC) && !$fails->{$hC}{$_->{uid}} }
              @by_rank[0 .. $bound[1] - 1];
cmp_ok(scalar(@updated), '>=', 1, 'agents of the first stages applied it');
is(scalar(grep { $_->{got}[-1][0] ne $hB } @updated), 0,
   'the updated agents were offered version 2 again');
($st, $g) = api('GET', 'configs/groups/web');
is($g->{config_hash}, $hB, 'the group keeps version 2');
($st, $r) = api('GET', 'configs/groups/web/versions');
is($r->{versions}[0]{version}, 3, 'version 3 stays in the history');

# --- a gate that pauses; resume, advance; failed agents are not offered again

my $hD = hash_of('D');
# the second agent of the first stage fails it
$fails->{$hD} = { $by_rank[1]{uid} => 1 };
($st, $r) = api('PUT', 'configs/groups/web', group_body('D',
                { stages => [ 2, '100%' ], soak_s => 600,
                  gates => { failed => 0 } }));
is($st, 200, 'a staged rollout of version 4, pausing on any failure');
ok(pump(60, sub { (rollout()->{state} // '') eq 'paused' }),
   'it pauses when the first stage fails');
is(rollout()->{counts}{failed}, 1, 'one agent of it failed');
($st, $r) = api('POST', 'rollouts/web/pause');
is($st, 409, 'pausing a paused rollout: 409');
($st, $r) = api('POST', 'rollouts/web/resume');
is($st, 200, 'resume');
is($r->{state}, 'running', 'it runs again');
pump(2.5);
is(rollout()->{state}, 'running',
   'failures counted before the resume do not stop it again');
($st, $r) = api('POST', 'rollouts/web/advance');
is($st, 200, 'advance');
is($r->{stage}, 2, 'to the last stage, before its soak');
ok(pump(60, sub {
    !grep { !received($_, $hD) } @$agents }),
   'every agent is offered version 4');
($st, $r) = api('POST', 'rollouts/web/advance');
is($r->{state}, 'done', 'advancing past the last stage ends it');
pump(3);
is(scalar(grep { received($_, $hD) != 1 } @$agents), 0,
   'no agent was offered version 4 twice, the one that failed it included');
is(field($by_rank[1], 'failed_hash'), $hD, 'what it failed is kept');

# --- an agent that connects mid-rollout; abort ---------------------------------

my $hE = hash_of('E');
($st, $r) = api('PUT', 'configs/groups/web', group_body('E',
                { stages => [ 1, '100%' ], soak_s => 600 }));
is($st, 200, 'a staged rollout of version 5');
my $canary = $by_rank[0];
ok(pump(30, sub { received($canary, $hE) }), 'its canary is offered it');
my ($low, $high);
until ($low && $high) {
    my $u = OpAMPFleet::random_uid();
    my $rk = rank($u);
    $low //= $u if $rk < $canary->{rank};
    $high //= $u if $rk > $by_rank[-1]{rank};
}
my $lo = new_agent($ta, $low);
my $hi = new_agent($tb, $high);
ok(pump(30, sub { @{ $lo->{got} } && @{ $hi->{got} } }),
   'two agents connect mid-rollout');
is($lo->{got}[0][0], $hE, 'the one placed before the canary gets version 5');
is($hi->{got}[0][0], $hD, 'the one placed after it gets version 4');
($st, $r) = api('POST', 'rollouts/web/abort');
is($st, 200, 'abort');
is($r->{state}, 'aborted', 'aborted');
like($r->{reason}, qr/aborted by alice/, 'by whom');
ok(pump(60, sub { ($lo->{got}[-1][0] // '') eq $hD
                  && ($canary->{got}[-1][0] // '') eq $hD }),
   'the agents that got version 5 are offered version 4 again');
($st, $r) = api('POST', 'rollouts/web/resume');
is($st, 409, 'an ended rollout cannot be resumed');
($st, $r) = api('POST', 'rollouts/nope/pause');
is($st, 404, 'no rollout of that group: 404');
($st, $r) = api('POST', 'rollouts/web/jump');
is($st, 404, 'an unknown action: 404');
($st, $r) = api('GET', 'rollouts');
is_deeply($r, { rollouts => [] }, 'no rollout runs');

# --- a staged rollback: version 1 put back through a rollout -----------------

($st, $r) = api('POST', 'configs/groups/web/rollback?version=1',
                $json->encode({ rollout => { stages => [ '50%', '100%' ],
                                             soak_s => 1 } }));
is($st, 200, 'a staged rollback to version 1');
is($r->{config_hash}, $hA, 'of version 1\'s files');
my $vr = $r->{version};
ok(pump(60, sub { (rollout()->{state} // '') eq 'done' }),
   'its rollout ends: done');
ok(pump(60, all_run($hA)), 'every agent runs version 1 again')
    or laggards($hA);
($st, $r) = api('GET', "configs/groups/web/versions/$vr");
is($r->{rollback_of}, 1, 'the new version records what it put back');
($st, $r) = api('POST', 'configs/groups/web/rollback?version=1',
                '{"rollout": {"stages": ["10%"]}}');
is($st, 400, 'a staged rollback with a bad plan: 400');
($st, $r) = api('POST', 'configs/groups/web/rollback?version=1',
                '{"plan": {}}');
is($st, 400, 'a rollback body without "rollout": 400');

# --- a record broken by hand stops only its own rollout ------------------------

($st, $r) = api('PUT', 'configs/groups/web', group_body('F',
                { stages => [ 1, '100%' ], soak_s => 600 }));
is($st, 200, 'a rollout of version 7');
$ta->redis('HDEL', "${P}rollout:group:web", 'to_hash', 'stage_ms');
ok(pump(30, sub { (rollout()->{state} // '') eq 'aborted' }),
   'a record without its hash and stage time is ended by the timer');
like(rollout()->{reason}, qr/incomplete/, 'saying why');
ok(pump(30, all_run($hA)), 'the group\'s agents keep version 1');

# --- the audit log has every step -----------------------------------------------

($st, $r) = api('GET', 'audit?limit=100');
my @paths = map { "$_->{method} $_->{path}" } @{ $r->{entries} // [] };
ok((grep { $_ eq 'POST /admin/rollouts/web/abort' } @paths),
   'the audit log has the abort');

$ta->done;
$tb->done;
done_testing;
