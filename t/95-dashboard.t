#!/usr/bin/perl

# The dashboard (docs/dashboard.md): opamp_dashboard serves the page's
# three files with their types, an ETag that names the files and the API
# path, a Content-Security-Policy that forbids loads from elsewhere, GET
# and HEAD only; GET fleet's inventory moves exactly with what agents
# report and is bounded; GET agents filters by config hash and component;
# and the page, in Debian's chromium driven by playwright-core
# (t/node/dashboard.mjs), shows the fleet of simulated plain HTTP
# collectors and each host's own figures (a stale one marked), opens a
# group's agents from the summary's counts, filters, opens an agent,
# makes and edits a group config and sees the agents apply it, shows a
# FAILED agent's error and API errors in words, works from the keyboard
# and at 390 px.  Screenshots of each view
# go to build/screenshots/.  A missing chromium or playwright-core fails
# this test: make test installs both.

use strict;
use warnings;

use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use JSON::PP;
use POSIX qw(WNOHANG);
use Time::HiRes qw(time sleep);

use OpAMPTest;
use OpAMPCollector;

my $P = 'opamp:';
my $ROOT = OpAMPTest::root();
my $node_dir = "$FindBin::Bin/node";
my $chromium = $ENV{CHROMIUM} // '/usr/bin/chromium';

ok(-x $chromium, "chromium is installed ($chromium)")
    or diag('make test installs the Debian package chromium');
ok(-f "$node_dir/node_modules/playwright-core/package.json",
   'playwright-core is installed in t/node/node_modules (npm ci)');

my $t = OpAMPTest->new;
$t->start_redis;
$t->start_nginx('
        location /opamp-admin/ { opamp_admin; }
        location = /metrics { opamp_metrics; }
        location /opamp-dashboard/ { opamp_dashboard /opamp-admin/ /metrics; }
        location /other/ { opamp_dashboard "/a&b\"<c>" "/m&\"<>"; }
        location /default/ { opamp_dashboard; }
        location /api2/ { opamp_dashboard /api2/; }', workers => 2,
    http => 'opamp_server_id dash-a;');

sub get {
    my ($path, %h) = @_;
    return $t->http_post('', -method => 'GET', -path => $path,
                         'Content-Type' => undef, %h);
}

sub admin {
    my ($method, $path, $body) = @_;
    my ($st, $h, $b) = $t->http_post($body // '', -method => $method,
                                     -path => "/opamp-admin/$path",
                                     'Content-Type' => 'application/json');
    my $j = eval { decode_json($b) };
    return ($st, $j, $b);
}

sub slurp {
    my ($f) = @_;
    open my $fh, '<:raw', $f or die "$f: $!";
    local $/;
    return <$fh>;
}

# --- the files ---------------------------------------------------------

my $CSP = "default-src 'none'; script-src 'self'; style-src 'self'; "
        . "img-src 'self' data:; connect-src 'self'; base-uri 'none'; "
        . "form-action 'none'; frame-ancestors 'none'";

my $html = slurp("$ROOT/src/dashboard/index.html");
my $page = $html =~ s{\@OPAMP_ADMIN_API\@}{/opamp-admin/}r
                 =~ s{\@OPAMP_METRICS\@}{/metrics}r;
my %want = (
    '' => [ 'text/html; charset=utf-8', $page ],
    'index.html' => [ 'text/html; charset=utf-8', $page ],
    'dashboard.css' => [ 'text/css; charset=utf-8',
                         slurp("$ROOT/src/dashboard/dashboard.css") ],
    'dashboard.js' => [ 'text/javascript; charset=utf-8',
                        slurp("$ROOT/src/dashboard/dashboard.js") ],
);

my $etag;
for my $f (sort keys %want) {
    my ($st, $h, $b) = get("/opamp-dashboard/$f");
    is($st, 200, "GET /opamp-dashboard/$f");
    is($h->{'content-type'}, $want{$f}[0], "$f: Content-Type");
    ok($b eq $want{$f}[1], "$f: the file of src/dashboard as it is"
       . ($f =~ /html|^$/ ? ', the API path in its <meta>' : ''));
    is($h->{'content-security-policy'}, $CSP,
       "$f: a Content-Security-Policy that allows nothing from elsewhere");
    is($h->{'cache-control'}, 'no-cache', "$f: revalidated at each load");
    is($h->{'x-content-type-options'}, 'nosniff', "$f: nosniff");
    like($h->{etag} // '', qr/^"[0-9a-f]{16}-[0-9a-f]{8}"$/, "$f: an ETag");
    $etag //= $h->{etag};
    is($h->{etag}, $etag, "$f: the ETag of the set of files");
}

my ($st, $h, $b) = get('/opamp-dashboard/', 'If-None-Match' => $etag);
is($st, 304, 'If-None-Match with the ETag: 304');
($st, $h, $b) = get('/opamp-dashboard/dashboard.js',
                    'If-None-Match' => '"0000000000000000-00000000"');
is($st, 200, 'another ETag: 200');

($st, $h, $b) = $t->http_post('', -method => 'HEAD',
                              -path => '/opamp-dashboard/dashboard.js');
is($st, 200, 'HEAD');
is($b, '', 'HEAD: no body');
is($h->{'content-length'}, length $want{'dashboard.js'}[1],
   'HEAD: the length of the file');

for my $m ('POST', 'PUT', 'DELETE') {
    ($st, $h) = $t->http_post('x', -method => $m,
                              -path => '/opamp-dashboard/');
    is($st, 405, "$m: 405");
    is($h->{allow}, 'GET, HEAD', "$m: Allow: GET, HEAD");
}

($st) = get('/opamp-dashboard/nothing.js');
is($st, 404, 'another file: 404');
($st) = get('/opamp-dashboard/../opamp-dashboard/x/dashboard.css');
is($st, 200, 'a file is its name, whatever the path before it');

($st, $h, $b) = get('/other/');
like($b, qr{<meta name="opamp-admin-api" content="/a&amp;b&quot;&lt;c&gt;/">},
     'the API path HTML-escaped in the <meta>, a slash added');
like($b, qr{<meta name="opamp-metrics" content="/m&amp;&quot;&lt;&gt;">},
     'the metrics path HTML-escaped in its <meta>, as it is');
isnt($h->{etag}, $etag, 'another API path: another ETag');
($st, $h, $b) = get('/default/');
like($b, qr/<meta name="opamp-admin-api" content="\/opamp-admin\/">/,
     'no argument: /opamp-admin/');
like($b, qr/<meta name="opamp-metrics" content="">/, '... and no metrics');
is($h->{'content-length'}, length $b, '... the length of what is sent');
isnt($h->{etag}, $etag, 'another metrics path alone: another ETag');
my $etag_default = $h->{etag};
($st, $h) = get('/api2/');
isnt($h->{etag}, $etag_default, 'another API path alone: another ETag');

for my $bad ('http://x/', '//x/', 'opamp-admin/', '/a/ metrics',
             '/a/ //m') {
    my ($rc, $out) = $t->nginx_t($t->conf_text(
        "location /d/ { opamp_dashboard $bad; }"));
    isnt($rc, 0, "opamp_dashboard $bad: refused");
    like($out, qr/\[emerg\].*opamp_dashboard.*absolute path/, 'with why');
}

# --- the inventory -------------------------------------------------------

my $CAPS = $OpAMPCollector::CAPABILITIES;

sub collector_text {
    my (%o) = @_;
    my $text = OpAMPCollector::full_status(uid => $o{uid}, seq => $o{seq},
                                           host => $o{host},
                                           build => $o{build} // 1);
    $text =~ s/string_value: "otelcol-contrib"/string_value: "web"/;
    $text =~ s/string_value: "0\.114\.0"/string_value: "$o{version}"/
        if $o{version};
    $text =~ s/string_value: "linux"/string_value: "$o{os}"/ if $o{os};
    return $text;
}

my %inv_uid;
for my $i (1 .. 3) {
    my $u = random_uid();
    $inv_uid{$i} = $u;
    my ($s) = $t->http_post($t->a2s(collector_text(
        uid => $u, seq => 0, host => "inv-$i", build => $i == 3 ? 2 : 1,
        version => $i == 1 ? '0.113.0' : '0.114.0')));
    is($s, 200, "inventory agent $i reports");
}

sub inventory {
    my (undef, $j) = admin('GET', 'fleet');
    return $j->{inventory};
}

my $inv = inventory();
is($inv->{'version:0.114.0'}, 2, 'GET fleet: agents by service.version');
is($inv->{'version:0.113.0'}, 1, '... each version');
is($inv->{'os:linux'}, 3, '... by os.type');
is($inv->{'component:receivers/rece001'}, 3,
   '... by component (kind/name), of two builds');
is($inv->{'component:exporters/expo050'}, 3, '... each component');
is(scalar(grep { /^component:/ } keys %$inv), 190,
   '... 190 components of a contrib build');
is($t->redis('HLEN', "${P}fleet:inventory:lists"), 4,
   'two component lists kept once each, with their counts');
my ($fst, $fleet) = admin('GET', 'fleet');
is($fleet->{agents}, 3, 'GET fleet: agents');
is($fleet->{gauges}{'transport:http'}, 3, 'GET fleet: the fleet gauges');

# a description changed: the version moves, exactly
$t->http_post($t->a2s(collector_text(uid => $inv_uid{1}, seq => 1,
                                     host => 'inv-1', version => '0.115.0')));
$inv = inventory();
is($inv->{'version:0.115.0'}, 1, 'a new version counted');
ok(!exists $inv->{'version:0.113.0'}, 'the old one gone with its last agent');
is($inv->{'version:0.114.0'}, 2, 'the others as they were');

# a config hash reported
my $hash = 'ab' x 32;
my $hesc = join '', map { sprintf '\\%03o', $_ } unpack 'C*', pack 'H*', $hash;
$t->http_post($t->a2s('instance_uid: "' . uid_escape($inv_uid{2}) . '" '
    . "sequence_num: 1 capabilities: $CAPS remote_config_status { "
    . "last_remote_config_hash: \"$hesc\" "
    . 'status: RemoteConfigStatuses_APPLIED }'));
$inv = inventory();
is($inv->{"config:$hash"}, 1, 'by the config hash reported');

my (undef, $l) = admin('GET', "agents?config_hash=$hash");
is(scalar @{ $l->{agents} }, 1, 'GET agents?config_hash= finds it');
is($l->{agents}[0]{instance_uid}, uid_text($inv_uid{2}), '... that agent');
(undef, $l) = admin('GET', 'agents?component=receivers/rece070');
is(scalar @{ $l->{agents} }, 3, 'GET agents?component= finds the carriers');
(undef, $l) = admin('GET', 'agents?component=receivers/none');
is(scalar @{ $l->{agents} }, 0, '... and only them');
($st, $l) = admin('GET', 'agents?config_hash=XYZ');
is($st, 400, 'a config_hash that is not hex: 400');
like($l->{error}, qr/config_hash/, '... saying why');
($st, $l) = admin('GET', 'agents?component=' . ('x' x 129));
is($st, 400, 'a component over 128 bytes: 400');

# past the bound: a new value counts under other:<dimension>, and moves
# back from there exactly
my @fill = map { ("fill:$_", 1) } 1 .. 10000;
$t->redis('HSET', "${P}fleet:inventory", @fill);
$t->http_post($t->a2s(collector_text(uid => $inv_uid{3}, seq => 1,
                                     host => 'inv-3', version => '9.9.9')));
$inv = inventory();
ok(!exists $inv->{'version:9.9.9'}, 'past 10,000 fields no new value');
is($inv->{'other:version'}, 1, '... it counts under other:version');
is($inv->{'version:0.114.0'}, 1, '... and left what it counted for');
$t->redis('HDEL', "${P}fleet:inventory", map { "fill:$_" } 1 .. 10000);

# removed agents take back what they counted for: nothing is left
for my $i (1 .. 3) {
    my ($s) = admin('DELETE', 'agents/' . uid_text($inv_uid{$i}));
    is($s, 204, "agent $i removed");
}
is_deeply($t->hgetall("${P}fleet:inventory"), {},
          'the inventory empty once its agents are gone');
is($t->redis('EXISTS', "${P}fleet:inventory:lists"), 0,
   'and the component lists with them');

# --- the page in a browser, with agents that apply what they get --------

my @agents;
for my $i (1 .. 7) {
    push @agents, { uid => random_uid(), seq => 0,
                    host => $i == 7 ? 'web-bad' : "web-$i",
                    version => $i == 6 ? '0.113.0' : '0.114.0',
                    build => $i == 5 ? 2 : 1, fail => $i == 7 };
}

# one message of an agent; it answers what it was sent at the next one
sub poll_agent {
    my ($a) = @_;
    my $text;
    if ($a->{seq} == 0 || $a->{full}) {
        $text = collector_text(uid => $a->{uid}, seq => $a->{seq},
                               host => $a->{host}, build => $a->{build},
                               version => $a->{version});
        delete $a->{full};
    } else {
        $text = 'instance_uid: "' . uid_escape($a->{uid}) . '" sequence_num: '
              . "$a->{seq} capabilities: $CAPS";
    }
    $text .= ' ' . delete $a->{report} if $a->{report};
    my ($s, undef, $body) = $t->http_post($t->a2s($text));
    $a->{seq}++;
    return unless ($s // 0) == 200;
    my $r = $t->s2a_text($body);
    $a->{full} = 1 if $r =~ /flags: \d*[13579]\b|ReportFullState/;
    return unless $r =~ /remote_config \{(.*)/s;
    my $rc = $1;
    my ($hash) = $rc =~ /config_hash: "((?:[^"\\]|\\.)*)"/;
    my $file_re = qr/config_map \{\s*key: "([^"]*)"\s*value \{\s*/;
    my ($name, $body_text) = $rc =~ /${file_re}body: "((?:[^"\\]|\\.)*)"/;
    return unless defined $hash;
    $a->{report} = $a->{fail}
        ? "remote_config_status { last_remote_config_hash: \"$hash\" "
          . 'status: RemoteConfigStatuses_FAILED error_message: '
          . '"bad receiver: nosuch" }'
        : "remote_config_status { last_remote_config_hash: \"$hash\" "
          . 'status: RemoteConfigStatuses_APPLIED } effective_config { '
          . "config_map { config_map { key: \"$name\" value { body: "
          . "\"$body_text\" content_type: \"text/yaml\" } } } }";
}

poll_agent($_) for @agents;

# a host that published a minute ago and whose record has expired: the
# summary's hosts table marks it stale (GET hosts, t/57-hosts.t)
$t->redis('ZADD', "${P}hosts", int(time * 1000) - 60000, 'gone-host');

my $shots = "$ROOT/build/screenshots";
my $out = "$ROOT/build/dashboard-test.out";
unlink $out;
my $pid = fork() // die "fork: $!";
if ($pid == 0) {
    open STDOUT, '>', $out or POSIX::_exit(127);
    open STDERR, '>&', \*STDOUT;
    chdir $node_dir;
    $ENV{BASE} = 'http://127.0.0.1:' . $t->port . '/opamp-dashboard/';
    $ENV{SHOTS} = $shots;
    $ENV{AGENTS} = scalar @agents;
    $ENV{CHROMIUM} = $chromium;
    exec 'timeout', '300', 'node', 'dashboard.mjs' or POSIX::_exit(127);
}

# the agents poll while the browser works: every half second, at most
# 300 s in all
my $deadline = time + 310;
my $rounds = 0;
while (time < $deadline) {
    last if waitpid($pid, WNOHANG) == $pid;
    poll_agent($_) for @agents;
    $rounds++;
    sleep 0.5;
}
if (kill 0, $pid) {
    kill 'TERM', $pid;
    waitpid($pid, 0);
}
my $rc = $? >> 8;
is($rc, 0, 'the browser script ran to its end') or diag(`tail -40 $out`);

my ($done, $n) = (0, 0);
open my $fh, '<', $out or die "$out: $!";
while (my $line = <$fh>) {
    my $j = eval { decode_json($line) };
    if (!$j) {
        diag("node: $line");
        next;
    }
    if ($j->{done}) {
        $done = 1;
        diag("admin API calls the page made: $j->{api_calls}");
        next;
    }
    $n++;
    ok($j->{ok}, "browser: $j->{name}") or diag($j->{diag} // '');
    note("  $j->{diag}") if $j->{ok} && defined $j->{diag}
                            && $j->{name} =~ /loads/;
}
close $fh;
ok($done, "the browser script reported its end ($n checks)");
cmp_ok($n, '>=', 20, 'every browser check reported');

for my $v (qw(summary inventory agents agent group groups agent-failed audit
              rollouts rollout-done summary-phone agents-phone
              inventory-phone)) {
    ok(-s "$shots/$v.png", "screenshot $v.png");
}

$t->done;
done_testing;
