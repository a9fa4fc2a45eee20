#!/usr/bin/perl

# A failover that no Sentinel announces, as a managed Redis does it: the
# endpoint's name is moved to the new primary, and the old primary stays
# up as a replica.  The workers' connections to it still work, but its
# writes are answered -READONLY: the worker drops the connection at the
# first such answer, resolves the name again and goes on with the new
# primary, without a reload; the messages that met -READONLY get an
# error and their agents are asked for their full state afterwards.

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

my $NAME = 'primary.opamp.test';
my $file = $t->dir . '/dns-addr';

sub dns_answer {
    open my $f, '>', $file or die;
    print $f "$_[0]\n";
    close $f;
}

dns_answer('127.0.0.1');
my ($dns, $dns_port) = $ha->dns($NAME, $file);

my $a = $ha->server(port => $port);
my $b = $ha->server(port => $port, bind => '127.0.0.2');
my $B = "127.0.0.2:$port";

$t->start_nginx('', workers => 1, redis => "redis://$NAME:$port",
                http => "resolver 127.0.0.1:$dns_port valid=1s ipv6=off;");

my $DESC = 'agent_description { identifying_attributes { key: '
           . '"service.name" value { string_value: "ro" } } }';

sub post {
    my ($uid, $seq, $full) = @_;
    my ($s, $h, $body) = $t->http_post($t->a2s(
        'instance_uid: "' . uid_escape($uid) . "\" sequence_num: $seq "
        . 'capabilities: 1' . ($full ? " $DESC" : '')));
    return ($s, $s == 200 ? $t->s2a_text($body) : '');
}

my $u = random_uid();
my ($s) = post($u, 0, 1);
is($s, 200, 'an agent is served by the primary at 127.0.0.1');
($s) = post($u, 1);
is($s, 200, 'and its heartbeat');
is($ha->cmd($port, 'HGET', $t->agent_key($u), 'sequence_num'), 1,
   'its state is there');

# the failover: B takes over the name, A becomes B's replica
dns_answer('127.0.0.2');
sleep 1.2;    # the resolver's answer is valid=1s
$ha->cmd($port, 'REPLICAOF', '127.0.0.2', $port);
ok($t->wait_for(sub {
       (eval { $ha->cmd($port, 'INFO', 'replication') } // '')
           =~ /master_link_status:up/ }, 10),
   'the old primary is now a replica of the new one');

my $seq = 2;
my ($st, $text);
ok($t->wait_for(sub { ($st, $text) = post($u, $seq++); $st == 200 }, 10),
   'the agent is served again, by the new primary');
like($t->error_log,
     qr/\[error\].*redis command connection to .* lost: the server is a replica now \(READONLY\)/,
     'after one [error] line that says the server became a replica');
like($t->error_log,
     qr/\[notice\].*redis command connection to "redis:\/\/\Q$NAME\E:$port" \(127\.0\.0\.2:$port\) restored/,
     'and a [notice] with the new address');

# the message that met READONLY was not stored: full state asked
my $got_full = $text =~ /^flags: 1$/m;
($st, $text) = post($u, $seq++, 1) if $got_full;
ok($got_full, 'the agent is asked for its full state');
is($ha->cmd($B, 'HGET', $t->agent_key($u), 'sequence_num'), $seq - 1,
   'its state is on the new primary');

ok($t->wait_for(sub {
       my $ch = $ha->cmd($B, 'PUBSUB', 'CHANNELS', '*worker:*');
       @$ch == 1 }, 10),
   'the pub/sub connection moved too');

$t->done;
$ha->stop($_) for $a, $b, $dns;
done_testing;
