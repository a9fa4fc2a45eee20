#!/usr/bin/perl

# nginx -t on the Redis directives of docs/directives.md: Sentinel URLs,
# host names with and without nginx's resolver, TLS, opamp_redis_wait.
# What is accepted passes; everything else is refused with a clear
# [emerg] that names the problem.

use strict;
use warnings;

use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";

use OpAMPTest;

my $t = OpAMPTest->new;

sub conf {
    my ($url, $http) = @_;
    my $c = $t->conf_text('', http => $http // '');
    $c =~ s/opamp_redis 127\.0\.0\.1:\d+;/opamp_redis $url;/ or die
        if defined $url;
    return $c;
}

# a name that no resolver knows: *.invalid is reserved (RFC 6761)
my $NONAME = 'redis.opamp-test.invalid';

my @good = (
    [ 'sentinel://127.0.0.1:26379,127.0.0.1:26380,[::1]/mymaster' ],
    [ 'sentinel://user:p%40ss@127.0.0.1/mymaster/3' ],
    [ 'sentinel://127.0.0.1/m', 'opamp_redis_sentinel_auth secret;' ],
    [ 'sentinel://127.0.0.1/m', 'opamp_redis_sentinel_auth admin secret;' ],
    [ 'rediss://127.0.0.1:6380/0' ],
    [ '127.0.0.1:6379', 'opamp_redis_ssl on;
    opamp_redis_ssl_protocols TLSv1.2 TLSv1.3;
    opamp_redis_ssl_ciphers HIGH:!aNULL;
    opamp_redis_ssl_name redis.example;
    opamp_redis_ssl_server_name on;
    opamp_redis_ssl_verify off;
    opamp_redis_ssl_verify_depth 2;' ],
    [ "redis://$NONAME:6379", 'resolver 127.0.0.1:1;' ],
    [ "sentinel://$NONAME:26379/m", 'resolver 127.0.0.1:1 valid=5s;
    resolver_timeout 2s;' ],
    [ '127.0.0.1:6379', 'opamp_redis_wait 1 500ms;' ],
    [ '127.0.0.1:6379', 'opamp_redis_wait 2 4s;' ],
    [ '127.0.0.1:6379', 'opamp_redis_wait off;' ],
);

for my $g (@good) {
    my ($rc, $out) = $t->nginx_t(conf(@$g));
    is($rc, 0, "passes: $g->[0] " . ($g->[1] // '')) or diag $out;
}

my @bad = (
    [ 'sentinel://127.0.0.1:26379', undef,
      qr/no master name in redis address/ ],
    [ 'sentinel://127.0.0.1:26379/', undef,
      qr/no master name in redis address/ ],
    [ 'sentinel:///m', undef, qr/no host in redis address/ ],
    [ 'sentinel://127.0.0.1,/m', undef, qr/no host in redis address/ ],
    [ 'sentinel://127.0.0.1/m/x', undef,
      qr/invalid database number in redis address/ ],
    [ "redis://$NONAME:6379", undef,
      qr/host "\Q$NONAME\E" not found \(with "resolver" in the http block/ ],
    [ "sentinel://127.0.0.1,$NONAME/m", undef,
      qr/host "\Q$NONAME\E" not found/ ],
    [ '127.0.0.1:6379', 'opamp_redis_ssl on; opamp_redis_ssl_verify on;',
      qr/no opamp_redis_ssl_trusted_certificate for opamp_redis_ssl_verify/ ],
    [ 'rediss://127.0.0.1', 'opamp_redis_ssl_certificate /nonexistent.crt;',
      qr/no "opamp_redis_ssl_certificate_key" for/ ],
    [ 'rediss://127.0.0.1', 'opamp_redis_ssl_protocols SSLv9;',
      qr/invalid value "SSLv9"/ ],
    [ '127.0.0.1:6379', 'opamp_redis_wait 1 5s;',
      qr/"opamp_redis_wait" timeout 5000 must be shorter than "opamp_redis_timeout" 5000/ ],
    [ '127.0.0.1:6379', 'opamp_redis_wait 0 1s;',
      qr/invalid number of replicas/ ],
    [ '127.0.0.1:6379', 'opamp_redis_wait 1 0;',
      qr/invalid timeout/ ],
    [ '127.0.0.1:6379', 'opamp_redis_wait 1;',
      qr/takes "off" or a number of replicas and a timeout/ ],
    [ '127.0.0.1:6379', 'opamp_redis_wait off; opamp_redis_wait 1 1s;',
      qr/"opamp_redis_wait" directive is duplicate/ ],
    [ '127.0.0.1:6379', 'opamp_redis_sentinel_auth a; '
                        . 'opamp_redis_sentinel_auth b;',
      qr/"opamp_redis_sentinel_auth" directive is duplicate/ ],
    [ 'unix:/' . ('x' x 200), undef, qr/the path is too long/ ],
);

for my $b (@bad) {
    my ($url, $http, $re) = @$b;
    my ($rc, $out) = $t->nginx_t(conf($url, $http));
    isnt($rc, 0, "refused: $url " . ($http // ''));
    like($out, qr/\[emerg\].*$re/, '  with a clear message') or diag $out;
}

done_testing;
