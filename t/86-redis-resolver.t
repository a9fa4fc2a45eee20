#!/usr/bin/perl

# opamp_redis names a host, and the http block has a resolver: the
# workers resolve the name through nginx's resolver (a small DNS server
# of this test on loopback) each time they connect.  The name first
# points at a Redis on 127.0.0.1; then the DNS answer changes to
# 127.0.0.2, where another Redis listens on the same port, and the first
# one goes away: the workers follow the name there without a reload.  A
# name that does not resolve gives one clear [error] line and 503s, and
# the workers recover once it resolves again.

use strict;
use warnings;

use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";

use OpAMPTest;
use OpAMPRedisHA;

my $t = OpAMPTest->new;
my $ha = OpAMPRedisHA->new($t);
my $port = $t->redis_port;

my $ok2 = eval { IO::Socket::INET->new(LocalAddr => '127.0.0.2',
                                       LocalPort => 0, Proto => 'tcp') };
plan skip_all => 'no 127.0.0.2 on this host' unless $ok2;

my $NAME = 'redis.opamp.test';
my $file = $t->dir . '/dns-addr';

sub dns_answer {
    open my $f, '>', $file or die;
    print $f "$_[0]\n";
    close $f;
}

sub dns_queries {
    open my $f, '<', "$file.log" or return 0;
    my @q = grep { /^\Q$NAME\E 1$/ } <$f>;
    return scalar @q;
}

dns_answer('127.0.0.1');
my ($dns, $dns_port) = $ha->dns($NAME, $file);

my $a = $ha->server(port => $port);
my $b = $ha->server(port => $port, bind => '127.0.0.2');

$t->start_nginx('', workers => 2, redis => "redis://$NAME:$port",
                http => "resolver 127.0.0.1:$dns_port valid=1s ipv6=off;\n"
                        . "    resolver_timeout 2s;\n"
                        . "    opamp_redis_timeout 2s;");
pass('the workers connect to the address the resolver gave');
ok(dns_queries() >= 1, 'after asking the DNS server');

my $DESC = 'agent_description { identifying_attributes { key: '
           . '"service.name" value { string_value: "dns" } } }';

sub report {
    my ($uid, $seq) = @_;
    my ($s) = $t->http_post($t->a2s('instance_uid: "' . uid_escape($uid)
                                     . "\" sequence_num: $seq capabilities: 1"
                                     . " $DESC"));
    return $s;
}

my $u1 = random_uid();
is(report($u1, 0), 200, 'an agent is served');
my $key1 = $t->agent_key($u1);
is($ha->cmd($port, 'EXISTS', $key1), 1, 'its state is on the Redis at 127.0.0.1');
is($ha->cmd("127.0.0.2:$port", 'EXISTS', $key1), 0,
   'not on the one at 127.0.0.2');

# the name moves, then the old server goes away
dns_answer('127.0.0.2');
sleep 1.2;    # the resolver's cached answer is valid=1s
my $asked = dns_queries();
$ha->signal($a, 'KILL');
$ha->reap($a);

my $u2 = random_uid();
ok($t->wait_for(sub { report($u2, 0) == 200 }, 15),
   'agents are served again after the address moved, without a reload');
is($ha->cmd("127.0.0.2:$port", 'EXISTS', $t->agent_key($u2)), 1,
   'their state is on the Redis at 127.0.0.2');
ok(dns_queries() > $asked, 'the workers asked the DNS server again');

ok($t->wait_for(sub {
       my $ch = $ha->cmd("127.0.0.2:$port", 'PUBSUB', 'CHANNELS',
                         '*worker:*');
       @$ch == 2 }, 10),
   'both workers are subscribed there');

like($t->error_log, qr/\[notice\].*redis command connection to "redis:\/\/\Q$NAME\E:$port" \(127\.0\.0\.2:$port\) restored/,
     'the log names the new address');

# nginx starts while the name does not resolve
$t->stop_nginx;
my $before = length $t->error_log;
dns_answer('nx');
$t->start_nginx('', workers => 1, no_wait_redis => 1,
                redis => "redis://$NAME:$port",
                http => "resolver 127.0.0.1:$dns_port valid=1s ipv6=off;");
my $log = '';
ok($t->wait_for(sub { $log = substr($t->error_log, $before);
                      $log =~ /could not be resolved/ }, 10),
   'a name that does not resolve: an [error] line says so')
    or diag $log;
like($log, qr/\[error\].*redis command connection to .* "\Q$NAME\E" could not be resolved \(3: Host not found\); retrying/,
     'with the name and the reason') or diag $log;
is(report(random_uid(), 0), 503, 'agents get 503 meanwhile');

dns_answer('127.0.0.2');
ok($t->wait_for(sub { report(random_uid(), 0) == 200 }, 15),
   'served again once it resolves');

$t->done;
$ha->stop($_) for $b, $dns;
done_testing;
