#!/usr/bin/perl

# GET agents?group=<name> (docs/admin-api.md): the agents of a group, from
# the gauges' <prefix>group_members:<name>, paged by a cursor into it in
# rank order, combined with the other filters as they combine, with the
# same bound per request (ten pages' worth examined); an agent whose
# desired_config no longer names the group is not listed, whatever the
# set says; a bad group name is refused.

use strict;
use warnings;

use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use JSON::PP;

use OpAMPTest;

my $P = 'opamp:';

my $t = OpAMPTest->new;
$t->start_redis;
$t->start_nginx('
        location /admin/ { opamp_admin; }');

sub admin {
    my ($method, $path, $body) = @_;
    my ($st, $h, $b) = $t->http_post($body // '', -method => $method,
                                     -path => "/admin/$path",
                                     'Content-Type' => 'application/json');
    return ($st, eval { decode_json($b) }, $b);
}

for my $g ('web', 'db') {
    my ($st) = admin('PUT', "configs/groups/$g", encode_json({
        selector => "service.name=$g",
        files => { 'c.yaml' => { body => "receivers: {}\n" } } }));
    is($st, 200, "group $g");
}

# 25 agents of web (3 unhealthy), 5 of db, 3 of no group
my (%uid_of, %group_of);
my @who = ((map { [ 'web', $_ ] } 1 .. 25), (map { [ 'db', $_ ] } 1 .. 5),
           (map { [ 'other', $_ ] } 1 .. 3));
for my $w (@who) {
    my ($g, $i) = @$w;
    my $u = random_uid();
    my $text = 'instance_uid: "' . uid_escape($u) . '" sequence_num: 0 '
        . 'capabilities: 4099 agent_description { identifying_attributes { '
        . "key: \"service.name\" value { string_value: \"$g\" } } "
        . 'non_identifying_attributes { key: "host.name" value { '
        . "string_value: \"$g-$i\" } } } health { healthy: "
        . ($g eq 'web' && $i <= 3 ? 'false' : 'true') . ' }';
    my ($st) = $t->http_post($t->a2s($text));
    die "report: $st\n" unless ($st // 0) == 200;
    $uid_of{"$g-$i"} = uid_text($u);
    $group_of{uid_text($u)} = $g;
}

is($t->redis('ZCARD', "${P}group_members:web"), 25,
   'the gauges keep the 25 agents of web in group_members:web');

# a walk of a group's pages: every member once, in rank order
sub walk {
    my ($q) = @_;
    my ($cursor, @seen, $pages) = ('0');
    while (defined $cursor) {
        my ($st, $j) = admin('GET', "agents?$q&cursor=$cursor");
        die "GET agents?$q: $st\n" unless $st == 200;
        push @seen, map { $_->{instance_uid} } @{ $j->{agents} };
        $cursor = $j->{next_cursor};
        die "more than 100 pages\n" if ++$pages > 100;
    }
    return (\@seen, $pages);
}

my ($seen, $pages) = walk('group=web&limit=10');
is(scalar @$seen, 25, 'group=web, 10 a page: 25 agents');
is($pages, 3, '... in three pages');
my %once;
$once{$_}++ for @$seen;
is(scalar(grep { $group_of{$_} eq 'web' } keys %once), 25,
   '... each of web once, and only them');
my $rank = $t->redis('ZRANGE', "${P}group_members:web", 0, -1);
is_deeply($seen, [ map { uid_text(pack 'H*', s/-//gr) } @$rank ],
          '... in the group\'s rank order (its rollout order)');

my ($st, $j) = admin('GET', 'agents?group=db');
is(scalar @{ $j->{agents} }, 5, 'group=db: its 5 agents');
is(scalar(grep { $group_of{$_->{instance_uid}} eq 'db' } @{ $j->{agents} }),
   5, '... all of db');
is($j->{next_cursor}, undef, '... one page');
is($j->{agents}[0]{desired_config}, 'group:db', '... each with its group');

# combined with the other filters, as they combine
($st, $j) = admin('GET', 'agents?group=web&healthy=0');
is_deeply([ sort map { $_->{attributes}{'host.name'} } @{ $j->{agents} } ],
          [ 'web-1', 'web-2', 'web-3' ],
          'group=web&healthy=0: its unhealthy agents');
($st, $j) = admin('GET', 'agents?group=web&attr=host.name=web-7');
is(scalar @{ $j->{agents} }, 1, 'group=web&attr=host.name=web-7: one');
is($j->{agents}[0]{instance_uid}, $uid_of{'web-7'}, '... that agent');
($st, $j) = admin('GET', 'agents?group=db&attr=host.name=web-7');
is(scalar @{ $j->{agents} }, 0, 'another group\'s agent: none');
($st, $j) = admin('GET', 'agents?group=web&connected=0&limit=100');
is(scalar @{ $j->{agents} }, 0,
   'group=web&connected=0: none (plain HTTP agents, live)');
($st, $j) = admin('GET', 'agents?group=web&connected=1&limit=100');
is(scalar @{ $j->{agents} }, 25, 'group=web&connected=1: all 25');

# the same bound: ten pages' worth examined per request
($st, $j) = admin('GET', 'agents?group=web&limit=1&attr=host.name=none');
is(scalar @{ $j->{agents} }, 0, 'a filter nothing matches: an empty page');
is($j->{next_cursor}, '10', '... after 10 agents examined (limit 1)');

($st, $j) = admin('GET', 'agents?group=nosuch');
is($st, 200, 'a group without agents: 200');
is_deeply($j->{agents}, [], '... no agent');
is($j->{next_cursor}, undef, '... and no next page');

for my $bad ('a%20b', 'x%2Fy', 'g' x 129, '') {
    ($st, $j) = admin('GET', "agents?group=$bad");
    is($st, 400, "group=$bad: 400");
    like($j->{error} // '', qr/invalid group name/, '... saying why');
}

# the set may lag behind a direct write: the hash decides
my $u7 = $uid_of{'web-7'};
$t->redis('HSET', $t->agent_key(pack 'H*', $u7 =~ s/-//gr),
          'desired_config', 'agent');
($seen) = walk('group=web&limit=50');
is(scalar @$seen, 24, 'an agent whose desired_config left the group is '
   . 'not listed');
ok(!grep({ $_ eq $u7 } @$seen), '... that one');

$t->done;
done_testing;
