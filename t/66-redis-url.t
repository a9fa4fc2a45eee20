#!/usr/bin/perl

# opamp_redis (docs/directives.md) against a Redis that requires what the
# URL says: a database chosen with SELECT, AUTH with a user name and a
# percent-encoded password (Redis 6 ACLs), AUTH with a password only, and
# a unix socket with db, user and password parameters.  Each nginx really
# connects and an agent's state lands where the URL points; the Redis
# side (CLIENT LIST) shows the user and the socket the workers used.

use strict;
use warnings;

use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";

use OpAMPTest;

my $t = OpAMPTest->new(redis_auth => [ 'defpw' ]);
my $sock = $t->dir . '/redis.sock';

# the default user needs a password; "opamp" has its own, with an '@'
$t->start_redis('--requirepass', 'defpw',
                '--user', 'opamp', 'on', '>p@ss:w', '~*', '&*', '+@all',
                '--unixsocket', $sock, '--unixsocketperm', '777');

my $DESC = 'agent_description { identifying_attributes { key: '
           . '"service.name" value { string_value: "url" } } }';

sub register {
    my ($n) = @_;
    my $u = random_uid();
    my ($s, $h, $b) = $n->http_post($n->a2s(
        'instance_uid: "' . uid_escape($u) . '" sequence_num: 0 '
        . "capabilities: 1 $DESC"));
    return ($u, $s);
}

# the agent hash in database $db, read on a connection of our own
sub agent_in_db {
    my ($db, $u) = @_;
    $t->redis('SELECT', $db);
    my $h = $t->agent($u);
    $t->redis('SELECT', 0);
    return $h;
}

# the nginx workers' connections: [ { field => value } ] (not ours)
sub nginx_clients {
    my $list = $t->redis('CLIENT', 'LIST');
    my @c;
    for my $l (split /\n/, $list) {
        my %f = map { /^([^=]+)=(.*)$/ ? ($1 => $2) : () } split / /, $l;
        next if ($f{name} // '') eq 'opamp-test';
        push @c, \%f;
    }
    return @c;
}

my @cases = (
    [ 'redis://opamp:p%40ss%3Aw@127.0.0.1:' . $t->redis_port . '/3',
      3, 'opamp', 'tcp', 'redis:// with user, percent-encoded password, /3' ],
    [ 'redis://:defpw@127.0.0.1:' . $t->redis_port,
      0, 'default', 'tcp', 'redis:// with a password only' ],
    [ "unix:$sock?db=5&user=opamp&password=p%40ss%3Aw",
      5, 'opamp', 'unix', 'unix socket with db, user and password' ],
    [ "redis://opamp:p%40ss%3Aw\@127.0.0.1:" . $t->redis_port . '/0',
      0, 'opamp', 'tcp', 'redis:// with user and /0' ],
);

for my $c (@cases) {
    my ($url, $db, $user, $via, $what) = @$c;
    my $n = OpAMPTest->new(redis_port => $t->redis_port,
                           redis_auth => [ 'defpw' ]);
    $n->start_nginx('', redis => $url);
    ok($n->wait_for(sub { $n->workers_ready(1) }, 10),
       "$what: the worker's connections are up");
    my ($u, $s) = register($n);
    is($s, 200, "$what: an agent is served");
    is(agent_in_db($db, $u)->{sequence_num}, 0,
       "$what: its state is in database $db");
    for my $other (grep { $_ != $db } 0, 3, 5) {
        ok(!%{ agent_in_db($other, $u) }, "$what: not in database $other");
    }
    my @cl = nginx_clients();
    ok(@cl >= 2, "$what: the worker holds two connections");
    is_deeply([ sort { $a cmp $b } keys %{ { map { $_->{user} => 1 } @cl } } ],
              [ $user ], "$what: both authenticated as '$user'");
    my $unix = grep { ($_->{flags} // '') =~ /U/ } @cl;
    is($unix, $via eq 'unix' ? scalar @cl : 0,
       "$what: over " . ($via eq 'unix' ? 'the unix socket' : 'TCP'));
    my @cmd = grep { ($_->{sub} // 0) == 0 } @cl;
    ok(@cmd && !grep({ ($_->{db} // -1) != $db } @cmd),
       "$what: the command connection uses database $db");
    $n->done;
    # the agents of this instance say goodbye before the next one starts
    $t->wait_for(sub { !nginx_clients() }, 10);
}

# a wrong password: agents get 503 while the workers keep retrying
{
    my $n = OpAMPTest->new(redis_port => $t->redis_port,
                           redis_auth => [ 'defpw' ]);
    $n->start_nginx('', no_wait_redis => 1,
                    redis => 'redis://opamp:wrong@127.0.0.1:'
                             . $t->redis_port);
    my ($u, $s);
    $n->wait_for(sub { ($u, $s) = register($n); $s == 503 }, 10);
    is($s, 503, 'a wrong password: 503, no state written');
    ok($n->wait_for(sub { $n->error_log =~ /opamp: redis .*(WRONGPASS|invalid)/i }, 10),
       'and the error log says why');
    $n->done;
}

$t->done;
done_testing;
