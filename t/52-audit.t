#!/usr/bin/perl

# The audit log (docs/admin-api.md, "Audit log"; docs/redis-schema.md,
# "<prefix>audit"): every write of the admin API, done or refused, with
# who, what, when, the result and the note; bounded by
# opamp_admin_audit_entries, also under a flood of refused writes; paged
# newest first, filtered by target.

use strict;
use warnings;

use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use JSON::PP;
use MIME::Base64;
use Time::HiRes ();

use OpAMPTest;
use OpAMPFleet;

my $P = 'opamp:';

my $t = OpAMPTest->new;
$t->start_redis;

chmod 0755, $t->{dir};
{
    open my $f, '>', "$t->{dir}/htpasswd" or die;
    print $f "alice:{PLAIN}s3cret\n";
    close $f;
    chmod 0644, "$t->{dir}/htpasswd";
}

$t->start_nginx('
        location /admin/ {
            auth_basic "opamp admin";
            auth_basic_user_file htpasswd;
            opamp_admin_author $remote_user;
            client_max_body_size 4k;
            opamp_admin;
        }', workers => 2, http => 'opamp_admin_audit_entries 40;');

my $json = JSON::PP->new->canonical;
my $AUTH = 'Basic ' . encode_base64('alice:s3cret', '');

sub api {
    my ($method, $path, $body, %h) = @_;
    my ($s, $hd, $b) = $t->http_post($body // '', -method => $method,
                                     -path => "/admin/$path",
                                     'Content-Type' => 'application/json',
                                     Authorization => $AUTH, %h);
    my $data = eval { $json->decode($b) };
    return ($s, $data, $b);
}

sub xlen { $t->redis('XLEN', "${P}audit") }

# the newest entry, as Redis holds it, once it is there (the entry is
# written after the answer)
my $seen = 0;
sub newest_entry {
    $t->wait_for(sub { xlen() > $seen }, 5);
    $seen = xlen();
    my $e = $t->redis('XREVRANGE', "${P}audit", '+', '-', 'COUNT', 1)->[0];
    return { id => $e->[0], @{ $e->[1] } };
}

# an agent to act on
my $u = random_uid();
my $ut = uid_text($u);
my ($st) = $t->http_post($t->a2s('instance_uid: "' . uid_escape($u) . '" '
                                 . 'sequence_num: 0 capabilities: 0x403 '
                                 . 'agent_description { '
                                 . 'identifying_attributes { key: "a" '
                                 . 'value { string_value: "b" } } }'));
is($st, 200, 'an agent reported');

my $t0 = Time::HiRes::time() * 1000;
my $CFG = '{"files": {"c.yaml": {"body": "x: 1\n"}}}';

# --- each write kind ---------------------------------------------------------

for my $case (
    [ 'PUT', 'configs/groups/web', $CFG, 200, 'group:web' ],
    [ 'PUT', 'configs/groups/web', '{"files": 1', 400, 'group:web',
      qr/invalid JSON/ ],
    [ 'PUT', "configs/agents/$ut", $CFG, 200, "agent:$ut" ],
    [ 'POST', 'configs/groups/web/rollback?version=1', '', 200,
      'group:web' ],
    [ 'DELETE', 'configs/groups/web/versions', '', 409, 'group:web',
      qr/delete the config first/ ],
    [ 'DELETE', "configs/agents/$ut", '', 204, "agent:$ut" ],
    [ 'DELETE', 'configs/groups/none', '', 404, 'group:none',
      qr/nothing to delete/ ],
    [ 'PUT', 'connection-settings', '{"own_metrics": {"destination_endpoint":'
      . ' "https://otlp.example:4318/v1/metrics"}}', 200, 'fleet' ],
    [ 'DELETE', 'connection-settings', '', 204, 'fleet' ],
    [ 'PUT', "packages/agents/$ut", '{"all_packages_hash": "a1",'
      . ' "packages": {}}', 200, "agent:$ut" ],
    [ 'POST', "agents/$ut/restart", '', 202, "agent:$ut" ],
    [ 'POST', "agents/$ut/messages", '{"capability": "c", "type": "t",'
      . ' "data": "d"}', 202, "agent:$ut" ],
    [ 'POST', 'agents/' . uid_text(random_uid()) . '/restart', '', 404,
      qr/^agent:/, qr/unknown agent/ ],
    [ 'PUT', 'agents', '', 405, '', qr/method not allowed/ ],
    [ 'DELETE', "agents/$ut", '', 204, "agent:$ut" ],
  )
{
    my ($meth, $path, $body, $want, $target, $reason) = @$case;
    my ($s, $d, $raw) = api($meth, $path, $body,
                            'OpAMP-Note' => "note for $meth $path");
    is($s, $want, "$meth $path: $want") or diag $raw;
    my $e = newest_entry();
    is($e->{method}, $meth, '  audited: its method');
    is($e->{path}, "/admin/$path", '  its path, with the query');
    if (ref $target) {
        like($e->{target}, $target, '  its target');
    } else {
        is($e->{target}, $target, '  its target');
    }
    is($e->{status}, $want, '  the result');
    is($e->{author}, 'alice', '  who: $remote_user');
    is($e->{note}, "note for $meth $path", '  the OpAMP-Note header');
    # nginx's cached clock, against this process's: a wide margin, so that
    # no verdict depends on how loaded the machine is
    my $now = Time::HiRes::time() * 1000;
    ok($e->{ms} >= $t0 - 60000 && $e->{ms} <= $now + 60000,
       '  when: Unix ms') or diag "ms $e->{ms}, test began $t0, now $now";
    if ($reason) {
        like($e->{reason}, $reason, '  and the reason of the refusal');
    } else {
        ok(!exists $e->{reason}, '  no reason for a done write');
    }
}

my $n = xlen();
api('GET', 'configs/groups');
api('GET', 'audit');
api('HEAD', 'agents');
sleep 1;
is(xlen(), $n, 'reads are not audited');

# --- the admin API pages it ---------------------------------------------------

my ($s, $d) = api('GET', 'audit');
is($s, 200, 'GET audit');
is(scalar @{ $d->{entries} }, 15, 'every write is there');
is($d->{entries}[0]{path}, "/admin/agents/$ut", 'newest first');
is($d->{entries}[0]{status}, 204, 'numbers as numbers');
is($d->{entries}[-1]{path}, '/admin/configs/groups/web', 'oldest last');
is($d->{next_cursor}, undef, 'one page');

my (@ids, $cursor);
for (1 .. 10) {
    ($s, $d) = api('GET', 'audit?limit=5' . ($cursor ? "&cursor=$cursor" : ''));
    ok(@{ $d->{entries} } <= 5, 'a page holds at most limit entries');
    push @ids, map { $_->{id} } @{ $d->{entries} };
    $cursor = $d->{next_cursor} // last;
}
is(scalar @ids, 15, 'paging visits every entry');
is_deeply(\@ids, [ sort { $b cmp $a } @ids ], 'newest first, each once')
    or diag explain \@ids;
is(scalar(keys %{ { map { $_ => 1 } @ids } }), 15, 'no entry twice');

($s, $d) = api('GET', 'audit?target=group:web');
is_deeply([ map { "$_->{method} $_->{status}" } @{ $d->{entries} } ],
          [ 'DELETE 409', 'POST 200', 'PUT 400', 'PUT 200' ],
          'filtered by target');
($s, $d) = api('GET', 'audit?target=group%3Aweb&limit=2');
is(scalar @{ $d->{entries} }, 2, 'a percent-encoded target, a page of 2');
ok(defined $d->{next_cursor}, 'with a cursor');
($s, $d) = api('GET', "audit?target=group:web&limit=2&cursor=$d->{next_cursor}");
is_deeply([ map { "$_->{method} $_->{status}" } @{ $d->{entries} } ],
          [ 'PUT 400', 'PUT 200' ], 'its next page');

for my $case ([ 'audit?limit=0', qr/limit/ ], [ 'audit?limit=1001', qr/limit/ ],
              [ 'audit?cursor=abc', qr/cursor/ ],
              [ 'audit?cursor=1-', qr/cursor/ ],
              [ 'audit?target=' . ('x' x 300), qr/target/ ]) {
    ($s, $d) = api('GET', $case->[0]);
    is($s, 400, "GET $case->[0]: 400");
    like($d->{error} // '', $case->[1], '  with the reason');
}
($s) = api('POST', 'audit');
is($s, 405, 'the log is read only');

# --- bounded: opamp_admin_audit_entries 40, also under a flood ---------------

my $first = $t->redis('XRANGE', "${P}audit", '-', '+', 'COUNT', 1)->[0][0];
for my $i (1 .. 120) {
    api('PUT', 'configs/groups/bad%20name', '{}',
        'OpAMP-Note' => ('n' x 300));
}
ok($t->wait_for(sub {
       my $e = $t->redis('XREVRANGE', "${P}audit", '+', '-', 'COUNT', 1);
       ($e->[0][1] // [])->[1] && xlen() == 40
           && $t->redis('XRANGE', "${P}audit", '-', '+', 'COUNT', 1)->[0][0]
              ne $first }, 10),
   '120 refused writes: the log holds 40 entries, the oldest went');
is(xlen(), 40, 'never more than the bound');
my $e = newest_entry();
is($e->{status}, 400, 'each refusal audited');
is(length $e->{note}, 256, 'a note over 256 bytes: its first 256 kept');
like($e->{reason}, qr/invalid group name|OpAMP-Note/, 'with the reason');

my ($s2) = api('DELETE', 'configs/groups/' . ('z' x 3000));
is($s2, 400, 'a long path');
$e = newest_entry();
is(length $e->{path}, 512, 'is kept to its first 512 bytes');

# --- the doc's promises ----------------------------------------------------------

my $doc = do { local (@ARGV, $/) = "$FindBin::Bin/../docs/admin-api.md"; <> };
like($doc, qr/## Audit log/, 'admin-api.md documents the audit log');

$t->done;
done_testing;
