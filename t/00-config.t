#!/usr/bin/perl

# nginx -t: the module's directives accept what docs/directives.md says
# and refuse everything else with a clear message.  Also: Debian's nchan
# module loads beside this one (hiredis linked privately).

use strict;
use warnings;

use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";

use OpAMPTest;

my $t = OpAMPTest->new;

sub conf {
    my (%o) = @_;
    return $t->conf_text('', %o);
}

my ($rc, $out) = $t->nginx_t(conf(location => '
            opamp_heartbeat_interval 17s;
            opamp_agent_timeout 1m;
            opamp_max_message_size 1k;
            opamp_send_timeout 10s;
            opamp_send_queue_limit 1m;
            opamp_gzip_min_length 0;',
    http => '
    opamp_server_id edge-1.example;
    opamp_redis_timeout 500ms;'));
is($rc, 0, 'a configuration with every directive passes nginx -t')
    or diag $out;

# each bad value fails with its message
my @bad = (
    [ 'opamp_max_message_size below 1k',
      location => 'opamp_max_message_size 512;', qr/must be at least 1k/ ],
    [ 'opamp_agent_timeout not longer than the heartbeat',
      location => 'opamp_heartbeat_interval 30s; opamp_agent_timeout 30s;',
      qr/"opamp_agent_timeout" .* must be longer than/ ],
    [ 'opamp_heartbeat_interval 0',
      location => 'opamp_heartbeat_interval 0;', qr/at least 1s|greater than/ ],
    [ 'opamp_send_timeout 0', location => 'opamp_send_timeout 0;',
      qr/must be greater than zero/ ],
    [ 'opamp_redis_prefix with a brace', prefix => '"a{b"',
      qr/invalid character in "opamp_redis_prefix"/ ],
    [ 'opamp_redis_prefix too long',
      prefix => 'p' x 65,
      qr/longer than 64 characters/ ],
    [ 'duplicate opamp_redis_prefix',
      http => 'opamp_redis_prefix b:;',
      qr/is duplicate/ ],
    [ 'opamp_server_id too long',
      http => 'opamp_server_id ' . ('s' x 201) . ';',
      qr/1 to 200 characters/ ],
    [ 'opamp in the http context', http => 'opamp;',
      qr/"opamp" directive is not allowed here/ ],
    [ 'opamp with an argument', location => 'opamp on;',
      qr/invalid number of arguments in "opamp"/ ],
    [ 'a custom capability with a control character',
      location => "opamp_custom_capabilities \"a\tb\";",
      qr/invalid custom capability/ ],
);

for my $b (@bad) {
    my ($name, $where, $text, $re) = @$b;
    ($rc, $out) = $t->nginx_t(conf($where => $text));
    isnt($rc, 0, "nginx -t fails: $name");
    like($out, $re, "with a clear message: $name");
    like($out, qr/\[emerg\]/, "at emerg level: $name");
}

# Redis URLs: the forms that work, and the ones refused at -t
for my $url ('127.0.0.1:6379', 'localhost', 'redis://127.0.0.1',
             'redis://:secret@127.0.0.1:6380/2',
             'redis://user:p%40ss@127.0.0.1/0', 'unix:/run/redis.sock',
             'unix:/run/redis.sock?db=3&password=x&user=u', '[::1]:6379')
{
    my $c = conf();
    $c =~ s/opamp_redis 127\.0\.0\.1:\d+;/opamp_redis $url;/;
    ($rc, $out) = $t->nginx_t($c);
    is($rc, 0, "redis URL accepted: $url") or diag $out;
}

for my $b ([ 'redis://127.0.0.1:notaport', qr/invalid redis address/ ],
           [ 'unix:', qr/an absolute path is required/ ],
           [ 'unix:relative.sock', qr/an absolute path is required/ ],
           [ 'redis://127.0.0.1/x', qr/invalid database number/ ],
           [ 'unix:/r.sock?db=-1', qr/invalid database number/ ],
           [ 'unix:/r.sock?color=red', qr/only "db", "user" and "password"/ ],
           [ 'redis://', qr/no host in redis address/ ],
           [ 'no.such.host.invalid', qr/host not found|invalid redis address/ ],
           [ 'http://127.0.0.1', qr/invalid redis address/ ])
{
    my ($url, $re) = @$b;
    my $c = conf();
    $c =~ s/opamp_redis 127\.0\.0\.1:\d+;/opamp_redis $url;/;
    ($rc, $out) = $t->nginx_t($c);
    isnt($rc, 0, "redis URL refused: $url");
    like($out, $re, "with a clear message: $url");
}

my $c = conf(http => 'opamp_redis 127.0.0.1:1;');
($rc, $out) = $t->nginx_t($c);
like($out, qr/"opamp_redis" directive is duplicate/, 'duplicate opamp_redis');

# Debian's nchan module (its own hiredis 1.0) loads beside this one
SKIP: {
    my $nchan = '/usr/lib/nginx/modules/ngx_nchan_module.so';
    skip 'libnginx-mod-nchan is not installed', 4 unless -f $nchan;

    $t->start_redis;
    $t->start_nginx('
        location = /sub { nchan_subscriber; nchan_channel_id test; }',
        main => "load_module $nchan;",
        http => 'nchan_redis_url "redis://127.0.0.1:' . $t->redis_port
                . '";');
    my $uid = random_uid();
    my ($st, $h, $body) = $t->http_post($t->a2s(
        'instance_uid: "' . uid_escape($uid) . '" sequence_num: 0 '
        . 'capabilities: 1 agent_description { identifying_attributes { '
        . 'key: "service.name" value { string_value: "beside-nchan" } } }'));
    is($st, 200, 'OpAMP works with nchan loaded in the same nginx');
    like($t->s2a_text($body), qr/capabilities: \d+/, 'a ServerToAgent');
    like($t->agent($uid)->{description} // '', qr/beside-nchan/,
         'state in Redis');
    $t->done;
}

done_testing;
