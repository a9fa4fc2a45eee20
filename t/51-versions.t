#!/usr/bin/perl

# Config versions (docs/admin-api.md, "Config versions"; docs/redis-schema.md,
# "Config versions"): PUTs through two nginx instances make numbered
# versions with their hash, author and note; contents are stored once and
# go with the last version that names them; a diff is exact; a rollback is
# a new version that reaches a connected WebSocket agent, whose reported
# config_hash matches; bad requests get 4xx with a reason.

use strict;
use warnings;

use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use JSON::PP;
use MIME::Base64;

use OpAMPTest;
use OpAMPFleet;

my $P = 'opamp:';

my $ta = OpAMPTest->new;
$ta->start_redis;
my $tb = OpAMPTest->new(redis_port => $ta->redis_port);

chmod 0755, $ta->{dir};
{
    open my $f, '>', "$ta->{dir}/htpasswd" or die;
    print $f "alice:{PLAIN}s3cret\n";
    close $f;
    chmod 0644, "$ta->{dir}/htpasswd";
}

my $ADMIN = '
        location /admin/ {
            auth_basic "opamp admin";
            auth_basic_user_file htpasswd;
            opamp_admin_author $remote_user;
            opamp_admin;
        }';
$ta->start_nginx($ADMIN, workers => 1,
                 http => 'opamp_server_id host-a; opamp_config_versions 3;');
$tb->start_nginx('
        location /admin/ {
            opamp_admin_author "b:$remote_addr";
            opamp_admin;
        }', workers => 1,
                 http => 'opamp_server_id host-b; opamp_config_versions 3;');

my $json = JSON::PP->new->canonical;
my $AUTH = 'Basic ' . encode_base64('alice:s3cret', '');

sub api {
    my ($t, $method, $path, $body, %h) = @_;
    my ($s, $hd, $b) = $t->http_post($body // '', -method => $method,
                                     -path => "/admin/$path",
                                     'Content-Type' => 'application/json',
                                     ($t == $ta ? (Authorization => $AUTH)
                                                : ()),
                                     %h);
    my $data = eval { $json->decode($b) };
    return ($s, $data, $b);
}

sub files_body {
    my (%files) = @_;
    return $json->encode({ files => { map {
        ($_ => { body => $files{$_}[0],
                 defined $files{$_}[1] ? (content_type => $files{$_}[1])
                                       : () }) } keys %files } });
}

sub put_group {
    my ($t, $name, $extra, %files) = @_;
    my $b = $json->decode(files_body(%files));
    my %extra = %$extra;
    my $h = delete $extra{_h} // [];
    %$b = (%$b, %extra);
    return api($t, 'PUT', "configs/groups/$name", $json->encode($b), @$h);
}

sub content_key { "${P}shared:config:$_[0]" }

# --- an agent in the group, over WebSocket -----------------------------------

my $CAPS = 0x1 | 0x2;    # ReportsStatus, AcceptsRemoteConfig
my $u = random_uid();
my $ws = OpAMPFleet->connect_ws(port => $ta->port);
$ws->send_msg($ta->a2s('instance_uid: "' . uid_escape($u) . '" '
                       . "sequence_num: 0 capabilities: $CAPS "
                       . 'agent_description { identifying_attributes { '
                       . 'key: "service.name" value { string_value: '
                       . '"web" } } }'));
$ws->recv_msg(5);
my $seq = 1;

sub remote_config_of {
    my ($text) = @_;
    return undef unless $text =~ /remote_config \{/;
    my %files;
    while ($text =~ /config_map \{\s*key: "([^"]*)"\s*value \{\s*body: "((?:[^"\\]|\\.)*)"(?:\s*content_type: "([^"]*)")?/g) {
        $files{$1} = [ $2, $3 ];
    }
    return \%files;
}

# the files as protoc's text format writes them
sub esc {
    my (%files) = @_;
    my %e;
    for (keys %files) {
        (my $b = $files{$_}[0]) =~ s/\n/\\n/g;
        $e{$_} = [ $b, $files{$_}[1] ];
    }
    return \%e;
}

# the next ServerToAgent that carries these files (others are skipped, a
# few at most), and its bytes
sub next_config {
    my (%want) = @_;
    my $want = esc(%want);
    my $rc;
    for (1 .. 8) {
        my $raw = $ws->recv_msg(5) // return ($rc);
        $rc = remote_config_of($ta->s2a_text($raw)) or next;
        return ($rc, $raw) if $json->encode($rc) eq $json->encode($want);
    }
    return ($rc);
}

# the agent applies what it got: it reports the hash back
sub applied {
    my ($hex) = @_;
    my $esc = join '', map { sprintf '\\%03o', $_ } unpack 'C*',
              pack 'H*', $hex;
    $ws->send_msg($ta->a2s('instance_uid: "' . uid_escape($u) . '" '
                           . 'sequence_num: ' . $seq++
                           . " capabilities: $CAPS remote_config_status { "
                           . "last_remote_config_hash: \"$esc\" status: "
                           . 'RemoteConfigStatuses_APPLIED }'));
}

# --- PUTs through two instances make versions --------------------------------

my %v1 = ('collector.yaml' => [ "receivers:\n  otlp: {}\nexporters:\n"
                                . "  debug: {}\n", 'text/yaml' ]);
my $h1 = OpAMPFleet::config_hash(%v1);
my ($s, $d, $raw) = put_group($ta, 'web', { selector => 'service.name=web',
                                            priority => 5 }, %v1);
is($s, 200, 'PUT through instance a') or diag $raw;
is($d->{version}, 1, 'the first PUT of a config is its version 1');
is($d->{config_hash}, $h1, 'with the config hash of the documented layout');

my ($rc, $m) = next_config(%v1);
is_deeply($rc, esc(%v1), 'the agent gets version 1');
ok(index($m, "\x12\x20" . pack('H*', $h1)) >= 0, 'with its hash');
applied($h1);
$ws->recv_msg(5);

# the same again through b: nothing changed, no new version
($s, $d) = put_group($tb, 'web', { selector => 'service.name=web',
                                   priority => 5 }, %v1);
is($d->{version}, 1, 'the same config PUT again makes no new version');
is($ta->redis('HGET', "${P}versions:group:web", 'last'), 1,
   'history: still one version');

my %v2 = ('collector.yaml' => [ "receivers:\n  otlp: {}\nexporters:\n"
                                . "  otlp: {}\n", 'text/yaml' ],
          'extra.yaml' => [ "a: 1\n" ]);
my $h2 = OpAMPFleet::config_hash(%v2);
($s, $d) = api($tb, 'PUT', 'configs/groups/web',
               $json->encode({ selector => 'service.name=web', priority => 5,
                               files => { map { ($_ => { body => $v2{$_}[0],
                                   defined $v2{$_}[1]
                                   ? (content_type => $v2{$_}[1]) : () }) }
                                   keys %v2 } }),
               'OpAMP-Note' => 'ship to otlp');
is($s, 200, 'a changed config PUT through instance b');
is($d->{version}, 2, 'is version 2');
($rc) = next_config(%v2);
is_deeply($rc, esc(%v2), 'the agent connected to a gets version 2 (PUT on '
          . 'b)');
applied($h2);
$ws->recv_msg(5);

# --- the history -------------------------------------------------------------

($s, $d) = api($ta, 'GET', 'configs/groups/web/versions');
is($s, 200, 'GET versions');
is_deeply([ map { $_->{version} } @{ $d->{versions} } ], [ 2, 1 ],
          'newest first');
my ($r2, $r1) = @{ $d->{versions} };
is($r1->{config_hash}, $h1, 'version 1: its hash');
is($r2->{config_hash}, $h2, 'version 2: its hash');
is($r1->{author}, 'alice', 'the author of version 1: $remote_user of '
   . 'auth_basic on instance a');
is($r2->{author}, 'b:127.0.0.1', 'of version 2: instance b\'s '
   . 'opamp_admin_author');
is($r2->{note}, 'ship to otlp', 'the OpAMP-Note header is the note');
is($r1->{note}, '', 'no note: empty');
is($r1->{selector}, 'service.name=web', 'a group version has its selector');
is($r1->{priority}, 5, 'and priority');
is($r2->{rollback_of}, undef, 'not a rollback');
ok($r2->{created_ms} >= $r1->{created_ms} && $r1->{created_ms} > 1.7e12,
   'created_ms: Unix ms, in order');
is($d->{next_cursor}, undef, 'all on one page');

($s, $d) = api($ta, 'GET', 'configs/groups/web/versions/2');
is($s, 200, 'GET one version');
is_deeply($d->{files}, { 'collector.yaml' => { body => $v2{'collector.yaml'}[0],
                                               content_type => 'text/yaml' },
                         'extra.yaml' => { body => "a: 1\n" } },
          'with its files as they were PUT');
is($d->{version}, 2, 'and its record');

my $c1 = $ta->hgetall(content_key($h1));
is($c1->{versions}, 1, 'content stored once, named by its config hash, '
   . 'counted by the versions that name it');
is($c1->{'file:collector.yaml'}, $v1{'collector.yaml'}[0],
   'its files as a config hash holds them');
is($ta->redis('HGET', "${P}config:group:web", 'version'), 2,
   'the live config names its version');

# --- diff ----------------------------------------------------------------------

($s, $d) = api($ta, 'GET', 'configs/groups/web/diff?from=1&to=2');
is($s, 200, 'diff 1 2');
is_deeply($d->{files}, [
    { name => 'collector.yaml', change => 'changed',
      diff => "--- a/collector.yaml\n+++ b/collector.yaml\n"
              . "@@ -1,4 +1,4 @@\n receivers:\n   otlp: {}\n exporters:\n"
              . "-  debug: {}\n+  otlp: {}\n" },
    { name => 'extra.yaml', change => 'added',
      diff => "--- a/extra.yaml\n+++ b/extra.yaml\n@@ -0,0 +1 @@\n+a: 1\n" },
  ], 'per file: changed with a unified diff, added') or diag $raw;
($s, $d) = api($ta, 'GET', 'configs/groups/web/diff?from=2');
is($d->{to}{version}, 2, 'to: the newest by default');
is_deeply($d->{files}, [], 'nothing differs from itself');

# --- rollback: a new version, fanned out ---------------------------------------

($s, $d, $raw) = api($ta, 'POST', 'configs/groups/web/rollback?version=1', '',
                     'OpAMP-Note' => 'back to debug');
is($s, 200, 'rollback to version 1') or diag $raw;
is($d->{version}, 3, 'is version 3');
is($d->{config_hash}, $h1, 'with version 1\'s hash');
($rc, $m) = next_config(%v1);
is_deeply($rc, esc(%v1), 'the connected agent gets version 1\'s files '
          . 'again');
ok(index($m // '', "\x12\x20" . pack('H*', $h1)) >= 0,
   'and its hash (protoc)');
applied($h1);
$ws->recv_msg(5);
ok($ta->wait_for(sub { ($ta->agent($u)->{config_hash} // '') eq $h1 }, 5),
   'the agent reports APPLIED for it: its config_hash is version 1\'s');
($s, $d) = api($ta, 'GET', 'configs/groups/web/versions?limit=1');
is($d->{versions}[0]{rollback_of}, 1, 'version 3 records what it put back');
is($d->{versions}[0]{note}, 'back to debug', 'and its note');
is($d->{next_cursor}, 3, 'a page of one: the cursor is its number');
is($ta->redis('HGET', content_key($h1), 'versions'), 2,
   'version 1\'s content is named twice, stored once');

# --- bounded history: opamp_config_versions 3 ----------------------------------

my @h;
for my $i (4 .. 6) {
    my %f = ('collector.yaml' => [ "v: $i\n" ]);
    ($s, $d) = put_group($tb, 'web', { selector => 'service.name=web',
                                       priority => 5 }, %f);
    is($d->{version}, $i, "PUT: version $i");
    $h[$i] = OpAMPFleet::config_hash(%f);
    if ($i == 4) {
        ok($ta->redis('EXISTS', content_key($h1)),
           'version 1 trimmed: its content stays, version 3 names it');
        ok($ta->redis('EXISTS', content_key($h2)), 'version 2 kept');
    }
    if ($i == 5) {
        ok(!$ta->redis('EXISTS', content_key($h2)),
           'version 2 trimmed: no version names its content, it is gone');
    }
}
($s, $d) = api($ta, 'GET', 'configs/groups/web/versions');
is_deeply([ map { $_->{version} } @{ $d->{versions} } ], [ 6, 5, 4 ],
          'three versions kept, the oldest trimmed');
ok(!$ta->redis('EXISTS', content_key($h1)),
   'version 3 trimmed: version 1\'s content is gone from Redis');
is_deeply([ sort grep { /^\Q${P}\Eshared:config:/ }
                 @{ $ta->redis('KEYS', '*') } ],
          [ sort map { content_key($h[$_]) } 4 .. 6 ],
          'only the kept versions\' contents are stored');
my $vh = $ta->hgetall("${P}versions:group:web");
is(scalar(grep { /^\d+:hash$/ } keys %$vh), 3, 'and only their records');
($s, $d) = api($ta, 'GET', 'configs/groups/web/versions/2');
is($s, 404, 'a trimmed version: 404');

# paging
($s, $d) = api($ta, 'GET', 'configs/groups/web/versions?limit=2');
is_deeply([ map { $_->{version} } @{ $d->{versions} } ], [ 6, 5 ],
          'page 1');
($s, $d) = api($ta, 'GET', "configs/groups/web/versions?limit=2"
                           . "&cursor=$d->{next_cursor}");
is_deeply([ map { $_->{version} } @{ $d->{versions} } ], [ 4 ], 'page 2');
is($d->{next_cursor}, undef, 'the last page');

# --- an agent's own config has versions too ------------------------------------

my $ut = uid_text($u);
my %a1 = ('own.yaml' => [ "x: 1\n" ]);
($s, $d) = api($tb, 'PUT', "configs/agents/$ut", files_body(%a1));
is($d->{version}, 1, 'an agent config: version 1 of its own history');
($rc) = next_config(%a1);
is_deeply($rc, esc(%a1), 'the agent gets its own config');
($s, $d) = api($tb, 'PUT', "configs/agents/$ut",
               files_body('own.yaml' => [ "x: 2\n" ]));
next_config('own.yaml' => [ "x: 2\n" ]);
($s, $d) = api($ta, 'POST', "configs/agents/$ut/rollback?version=1");
is($d->{version}, 3, 'rolled back: version 3');
($rc) = next_config(%a1);
is_deeply($rc, esc(%a1), 'the agent gets version 1 again');
($s, $d) = api($ta, 'GET', "configs/agents/$ut/versions");
ok(!exists $d->{versions}[0]{selector}, 'no selector in an agent\'s '
   . 'versions');

# --- deleting a config keeps its history ---------------------------------------

($s) = api($ta, 'DELETE', 'configs/groups/web');
is($s, 204, 'DELETE the group');
($s, $d) = api($ta, 'GET', 'configs/groups/web/versions');
is(scalar @{ $d->{versions} }, 3, 'its history stays');
($s, $d) = api($ta, 'POST', 'configs/groups/web/rollback?version=5');
is($d->{version}, 7, 'a rollback brings a deleted config back');
($s, $d) = api($ta, 'GET', 'configs/groups/web');
is($d->{config_hash}, $h[5], 'as version 5');
is($d->{version}, 7, 'the live config names version 7');

($s, $d) = api($ta, 'DELETE', 'configs/groups/web/versions');
is($s, 409, 'the history of a config that exists is not deleted');
like($d->{error}, qr/delete the config first/, 'with the reason');
api($ta, 'DELETE', 'configs/groups/web');
($s) = api($ta, 'DELETE', 'configs/groups/web/versions');
is($s, 204, 'the history of a deleted config is deleted on request');
ok(!$ta->redis('EXISTS', "${P}versions:group:web"), 'its key is gone');
is_deeply([ sort grep { /^\Q${P}\Eshared:config:/ }
                 @{ $ta->redis('KEYS', '*') } ],
          [ sort map { content_key(OpAMPFleet::config_hash(
                           'own.yaml' => [ "x: $_\n" ])) } 1, 2 ],
          'shared content left: only the agent config\'s');
ok(!$ta->redis('EXISTS', content_key($h[6])),
   'the group\'s contents are gone with its history');
($s) = api($ta, 'DELETE', 'configs/groups/web/versions');
is($s, 404, 'no history: 404');

# --- diff bounds: too many changes ---------------------------------------------

# 600 lines, every one changed: 1,200 lines differ
put_group($ta, 'big', { selector => 'no=match' },
          'a.txt' => [ join('', map { "line $_\n" } 1 .. 600) ],
          'b.txt' => [ "one\ntwo" ]);
put_group($ta, 'big', { selector => 'no=match' },
          'a.txt' => [ join('', map { "LINE $_\n" } 1 .. 600) ],
          'b.txt' => [ "one\nTWO\n" ]);
($s, $d, $raw) = api($ta, 'GET', 'configs/groups/big/diff?from=1');
is($s, 200, 'diff of large changes');
is_deeply([ map { [ $_->{name}, $_->{diff}, $_->{diff_omitted} ] }
                @{ $d->{files} } ],
          [ [ 'a.txt', undef, 'too many changes to show' ],
            [ 'b.txt', "--- a/b.txt\n+++ b/b.txt\n\@\@ -1,2 +1,2 \@\@\n"
                       . " one\n-two\n\\ No newline at end of file\n"
                       . "+TWO\n", undef ] ],
          'past 500 changed lines no diff, with the reason; a last line '
          . 'without newline marked as diff -u does')
    or diag $raw;

# --- diffs against patch(1) and diff --minimal: random edits ------------------

# each diff applied with patch(1) to the older text gives the newer, and it
# changes as many lines as GNU diff's minimal one (the edit distance is
# unique, the script may not be)
{
    srand(21);
    my @words = qw(a b c receivers exporters otlp debug);
    my $text = sub {
        my $n = int rand 30;
        my $t = join '', map { $words[rand @words] . "\n" } 1 .. $n;
        chop $t if $n && rand() < 0.2;       # no newline at the end
        return $t;
    };
    my $edit = sub {
        my @l = split /(?<=\n)/, shift;
        for (1 .. 1 + int rand 6) {
            my $i = int rand(@l + 1);
            my $r = rand;
            if ($r < 0.4 && @l) { splice @l, $i % @l, 1 }
            elsif ($r < 0.8) { splice @l, $i, 0, $words[rand @words] . "\n" }
            elsif (@l) { $l[$i % @l] = $words[rand @words] . "\n" }
        }
        my $t = join '', @l;
        $t =~ s/\n\z// if rand() < 0.2;
        return $t;
    };
    my $dir = $ta->{dir};
    my ($prev, $n, $ok, $tried) = ($text->(), 0, 0, 0);
    put_group($ta, 'prop', { selector => 'no=match' }, 'f' => [ $prev ]);
    $n++;
    for my $i (1 .. 40) {
        my $next = $i % 5 ? $edit->($prev) : $text->();
        next if $next eq $prev;
        ($s, $d) = put_group($ta, 'prop', { selector => 'no=match' },
                             'f' => [ $next ]);
        $n = $d->{version};
        ($s, $d) = api($ta, 'GET', 'configs/groups/prop/diff?from='
                                   . ($n - 1));
        my $u = $d->{files}[0]{diff} // '';
        for ([ "$dir/a", $prev ], [ "$dir/b", $next ], [ "$dir/p", $u ]) {
            open my $f, '>', $_->[0] or die;
            print $f $_->[1];
            close $f;
        }
        system("patch -s -o $dir/out $dir/a < $dir/p >/dev/null 2>&1");
        my $out = do { local (@ARGV, $/) = "$dir/out"; <> } // '';
        my $gnu = `diff --minimal -u $dir/a $dir/b`;
        my $count = sub { scalar grep { /^[-+](?![-+]{2} )/ } split /\n/, shift };
        $tried++;
        if ($out eq $next && $count->($u) == $count->($gnu)) {
            $ok++;
        } else {
            diag "diff of\n$prev\n---- and\n$next\n---- gave\n$u\n"
                 . "---- GNU\n$gnu";
        }
        $prev = $next;
    }
    ok($tried >= 30, "$tried random edits diffed");
    is($ok, $tried, 'each diff patches the older text into the newer, '
       . 'changing as many lines as diff --minimal');
}

# a content type alone changed: no text to show
put_group($ta, 'ct', { selector => 'no=match' }, 'f' => [ "x\n", 'a/b' ]);
put_group($ta, 'ct', { selector => 'no=match' }, 'f' => [ "x\n", 'c/d' ]);
($s, $d) = api($ta, 'GET', 'configs/groups/ct/diff?from=1');
is_deeply($d->{files}, [ { name => 'f', change => 'changed',
                           content_type => { from => 'a/b', to => 'c/d' },
                           diff => '' } ],
          'a content type changed alone: its change, an empty diff');

# --- a rollback puts a group's selector and priority back ----------------------

put_group($ta, 'sel', { selector => 'k=one', priority => 1 },
          'c.yaml' => [ "x\n" ]);
put_group($ta, 'sel', { selector => 'k=two', priority => 2 },
          'c.yaml' => [ "x\n" ]);
($s, $d) = api($ta, 'GET', 'configs/groups/sel/diff?from=1');
is_deeply([ $d->{selector}, $d->{priority}, $d->{files} ],
          [ { from => 'k=one', to => 'k=two' }, { from => '1', to => '2' },
            [] ], 'diff: selector and priority changed, no file');
($s, $d) = api($ta, 'POST', 'configs/groups/sel/rollback?version=1');
is($d->{version}, 3, 'rollback of the selector: version 3');
($s, $d) = api($ta, 'GET', 'configs/groups/sel');
is_deeply([ $d->{selector}, $d->{priority} ], [ 'k=one', 1 ],
          'the group has version 1\'s selector and priority again');
is($ta->redis('ZSCORE', "${P}groups", 'sel'), 1, 'and its place in '
   . '<prefix>groups');

# --- bad requests ---------------------------------------------------------------

for my $case (
    [ 'GET', 'configs/groups/big/versions/0', 400, qr/version is a number/ ],
    [ 'GET', 'configs/groups/big/versions/01', 400, qr/version is a number/ ],
    [ 'GET', 'configs/groups/big/versions/x', 400, qr/version is a number/ ],
    [ 'GET', 'configs/groups/big/versions/9', 404, qr/no such version/ ],
    [ 'GET', 'configs/groups/big/versions?limit=0', 400, qr/limit/ ],
    [ 'GET', 'configs/groups/big/versions?cursor=-1', 400, qr/cursor/ ],
    [ 'GET', 'configs/groups/big/diff', 400, qr/from \(required\)/ ],
    [ 'GET', 'configs/groups/big/diff?from=1&to=9', 404,
      qr/no such version/ ],
    [ 'POST', 'configs/groups/big/rollback', 400, qr/version must be/ ],
    [ 'POST', 'configs/groups/big/rollback?version=9', 404,
      qr/no such version/ ],
    [ 'PUT', 'configs/groups/big/versions', 405, qr/method not allowed/ ],
    [ 'GET', 'configs/groups/big/rollback', 405, qr/method not allowed/ ],
    [ 'GET', 'configs/groups/big/versions/1/x', 404, qr/no such admin/ ],
    [ 'GET', 'configs/groups/b%20g/versions', 400, qr/invalid group name/ ],
    [ 'DELETE', 'configs/groups/nothing/versions', 404, qr/no history/ ],
  )
{
    my ($meth, $path, $want, $re) = @$case;
    ($s, $d) = api($ta, $meth, $path);
    is($s, $want, "$meth $path: $want");
    like($d->{error} // '', $re, '  with the reason');
}
my $before = $ta->redis('HGET', "${P}versions:group:big", 'last');
($s, $d) = put_group($ta, 'big', { _h => [ 'OpAMP-Note' => 'x' x 257 ] },
                     'a.txt' => [ "z\n" ]);
is($s, 400, 'a note over 256 bytes: 400');
like($d->{error}, qr/OpAMP-Note/, '  with the reason');
is($ta->redis('HGET', "${P}versions:group:big", 'last'), $before,
   '  and no version');

$ws->close;
$tb->done;
$ta->done;
done_testing;
