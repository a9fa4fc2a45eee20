#!/usr/bin/perl

# nginx -t: the module's directives accept what docs/directives.md says
# and refuse everything else with a clear [emerg] message that names the
# file and line.  Also: Debian's nchan module loads beside this one
# (hiredis linked privately).

use strict;
use warnings;

use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";

use OpAMPTest;

my $t = OpAMPTest->new;

sub conf {
    my (%o) = @_;
    return $t->conf_text($o{server} // '', %o);
}

sub with_redis {
    my ($url) = @_;
    my $c = conf();
    $c =~ s/opamp_redis 127\.0\.0\.1:\d+;/opamp_redis $url;/ or die;
    return $c;
}

my ($rc, $out) = $t->nginx_t(conf());
is($rc, 0, 'the harness configuration passes nginx -t') or diag $out;
like($out, qr/syntax is ok/, 'nginx says the syntax is ok');

($rc, $out) = $t->nginx_t(conf(location => '
            opamp_heartbeat_interval 17s;
            opamp_agent_timeout 1m;
            opamp_max_message_size 1k;
            opamp_send_timeout 10s;
            opamp_send_queue_limit 1m;
            opamp_custom_messages_size 64m;
            opamp_gzip_min_length 0;
            opamp_heartbeat_recheck 0;
            opamp_custom_capabilities io.example.a io.example.b;',
    http => '
    opamp_server_id edge-1.example;
    opamp_redis_timeout 500ms;
    opamp_redis_max_reply 256m;
    opamp_agent_retention 30d;
    opamp_max_message_size 2m;
    opamp_custom_messages_size 1k;
    opamp_heartbeat_interval 10s;
    opamp_config_versions 1000;
    opamp_heartbeat_batch_delay 0;
    opamp_heartbeat_recheck 2m;
    opamp_admin_audit_entries 1;
    opamp_admin_author $remote_user;',
    server => '
        opamp_agent_timeout 2m;
        opamp_heartbeat_recheck 30s;
        opamp_admin_author "-";
        location /admin/ { opamp_admin; opamp_admin_author "$remote_addr"; }
        location = /v2/opamp { opamp; }'));
is($rc, 0, 'a configuration with every directive, at every level, passes')
    or diag $out;

for my $r ('off', '2s', '1ms', '7d') {
    ($rc, $out) = $t->nginx_t(conf(http => "opamp_agent_retention $r;"));
    is($rc, 0, "opamp_agent_retention $r passes") or diag $out;
}

($rc, $out) = $t->nginx_t(conf(location => '
            opamp_heartbeat_interval 1s;
            opamp_agent_timeout 1001ms;'));
is($rc, 0, 'opamp_agent_timeout just over opamp_heartbeat_interval passes')
    or diag $out;

# each bad value: nginx -t fails, at [emerg], with this message, naming
# the configuration file and a line
my @bad = (
    [ 'opamp_max_message_size below 1k',
      location => 'opamp_max_message_size 1023;',
      qr/"opamp_max_message_size" directive must be at least 1k/ ],
    [ 'opamp_custom_messages_size 1000',
      location => 'opamp_custom_messages_size 1000;',
      qr/"opamp_custom_messages_size" directive must be at least 1k/ ],
    [ 'opamp_custom_messages_size not a size',
      location => 'opamp_custom_messages_size lots;',
      qr/"opamp_custom_messages_size" directive invalid value/ ],
    [ 'duplicate opamp_custom_messages_size',
      location => 'opamp_custom_messages_size 1m; '
                  . 'opamp_custom_messages_size 2m;',
      qr/"opamp_custom_messages_size" directive is duplicate/ ],
    [ 'opamp_max_message_size 0',
      location => 'opamp_max_message_size 0;',
      qr/"opamp_max_message_size" directive must be at least 1k/ ],
    [ 'opamp_max_message_size not a size',
      location => 'opamp_max_message_size lots;',
      qr/"opamp_max_message_size" directive invalid value/ ],
    [ 'opamp_send_queue_limit below 1k',
      location => 'opamp_send_queue_limit 100;',
      qr/"opamp_send_queue_limit" directive must be at least 1k/ ],
    [ 'opamp_agent_timeout equal to the heartbeat',
      location => 'opamp_heartbeat_interval 30s; opamp_agent_timeout 30s;',
      qr/"opamp_agent_timeout" 30000 must be longer than "opamp_heartbeat_interval" 30/ ],
    [ 'opamp_agent_timeout shorter than the heartbeat',
      location => 'opamp_heartbeat_interval 1m; opamp_agent_timeout 20s;',
      qr/"opamp_agent_timeout" \d+ must be longer than "opamp_heartbeat_interval"/ ],
    [ 'opamp_agent_timeout shorter than the default heartbeat (30s)',
      location => 'opamp_agent_timeout 10s;',
      qr/"opamp_agent_timeout" \d+ must be longer than "opamp_heartbeat_interval"/ ],
    [ 'a heartbeat from the http level not shorter than the agent timeout',
      http => 'opamp_heartbeat_interval 5m;',
      qr/"opamp_agent_timeout" \d+ must be longer than "opamp_heartbeat_interval"/ ],
    [ 'opamp_heartbeat_interval 0',
      location => 'opamp_heartbeat_interval 0;',
      qr/"opamp_heartbeat_interval" must be at least 1s/ ],
    [ 'opamp_heartbeat_interval 500ms (rounds to 0s)',
      location => 'opamp_heartbeat_interval 500ms;',
      qr/"opamp_heartbeat_interval" (must be at least 1s|directive invalid value)/ ],
    [ 'opamp_heartbeat_interval not a time',
      location => 'opamp_heartbeat_interval soon;',
      qr/"opamp_heartbeat_interval" directive invalid value/ ],
    [ 'opamp_agent_timeout 0', location => 'opamp_agent_timeout 0;',
      qr/"opamp_agent_timeout" directive must be greater than zero/ ],
    [ 'opamp_agent_retention 0', http => 'opamp_agent_retention 0;',
      qr/invalid "opamp_agent_retention" "0": use a time of at least 1ms or "off"/ ],
    [ 'opamp_agent_retention not a time',
      http => 'opamp_agent_retention forever;',
      qr/invalid "opamp_agent_retention" "forever"/ ],
    [ 'opamp_agent_retention in a server',
      server => 'opamp_agent_retention 1d;',
      qr/"opamp_agent_retention" directive is not allowed here/ ],
    [ 'opamp_redis_max_reply below 64k',
      http => 'opamp_redis_max_reply 65535;',
      qr/"opamp_redis_max_reply" directive must be at least 64k/ ],
    [ 'opamp_redis_max_reply not a size',
      http => 'opamp_redis_max_reply lots;',
      qr/"opamp_redis_max_reply" directive invalid value/ ],
    [ 'opamp_redis_max_reply in a server',
      server => 'opamp_redis_max_reply 1m;',
      qr/"opamp_redis_max_reply" directive is not allowed here/ ],
    [ 'duplicate opamp_redis_max_reply',
      http => 'opamp_redis_max_reply 1m; opamp_redis_max_reply 2m;',
      qr/"opamp_redis_max_reply" directive is duplicate/ ],
    [ 'duplicate opamp_agent_retention',
      http => 'opamp_agent_retention 1d; opamp_agent_retention off;',
      qr/"opamp_agent_retention" directive is duplicate/ ],
    [ 'opamp_send_timeout 0', location => 'opamp_send_timeout 0;',
      qr/"opamp_send_timeout" directive must be greater than zero/ ],
    [ 'opamp_redis_timeout 0', http => 'opamp_redis_timeout 0;',
      qr/"opamp_redis_timeout" directive must be greater than zero/ ],
    [ 'opamp_redis_prefix with {', prefix => '"a{b:"',
      qr/invalid character in "opamp_redis_prefix" "a\{b:"/ ],
    [ 'opamp_redis_prefix with }', prefix => '"ab}:"',
      qr/invalid character in "opamp_redis_prefix"/ ],
    [ 'opamp_redis_prefix with a space', prefix => '"a b:"',
      qr/invalid character in "opamp_redis_prefix" "a b:"/ ],
    [ 'opamp_redis_prefix with a tab', prefix => "\"a\tb:\"",
      qr/invalid character in "opamp_redis_prefix"/ ],
    [ 'opamp_redis_prefix with a quote', prefix => q{'a"b:'},
      qr/invalid character in "opamp_redis_prefix"/ ],
    [ 'opamp_redis_prefix of 65 characters', prefix => 'p' x 65,
      qr/"opamp_redis_prefix" directive is longer than 64 characters/ ],
    [ 'opamp_redis_prefix with two arguments', prefix => 'a: b:',
      qr/invalid number of arguments in "opamp_redis_prefix"/ ],
    [ 'duplicate opamp_redis_prefix', http => 'opamp_redis_prefix b:;',
      qr/"opamp_redis_prefix" directive is duplicate/ ],
    [ 'duplicate opamp_redis', http => 'opamp_redis 127.0.0.1:1;',
      qr/"opamp_redis" directive is duplicate/ ],
    [ 'duplicate opamp in a location', location => 'opamp;',
      qr/"opamp" directive is duplicate/ ],
    [ 'duplicate opamp_heartbeat_interval',
      location => 'opamp_heartbeat_interval 10s; '
                  . 'opamp_heartbeat_interval 20s;',
      qr/"opamp_heartbeat_interval" directive is duplicate/ ],
    [ 'duplicate opamp_max_message_size',
      location => 'opamp_max_message_size 1m; opamp_max_message_size 2m;',
      qr/"opamp_max_message_size" directive is duplicate/ ],
    [ 'duplicate opamp_server_id',
      http => 'opamp_server_id a; opamp_server_id b;',
      qr/"opamp_server_id" directive is duplicate/ ],
    [ 'duplicate opamp_custom_capabilities',
      location => 'opamp_custom_capabilities a.b; '
                  . 'opamp_custom_capabilities c.d;',
      qr/"opamp_custom_capabilities" directive is duplicate/ ],
    [ 'opamp_admin in the opamp location', location => 'opamp_admin;',
      qr/"opamp_admin" directive is duplicate, or the location has another handler/ ],
    [ 'opamp_server_id too long',
      http => 'opamp_server_id ' . ('s' x 201) . ';',
      qr/"opamp_server_id" directive must be 1 to 200 characters long/ ],
    [ 'opamp_server_id with a space', http => 'opamp_server_id "a b";',
      qr/"opamp_server_id" directive must not contain whitespace/ ],
    [ 'opamp in the http context', http => 'opamp;',
      qr/"opamp" directive is not allowed here/ ],
    [ 'opamp in the server context', server => 'opamp;',
      qr/"opamp" directive is not allowed here/ ],
    [ 'opamp_redis in a server', server => 'opamp_redis 127.0.0.1:6379;',
      qr/"opamp_redis" directive is not allowed here/ ],
    [ 'opamp_redis_prefix in a location',
      location => 'opamp_redis_prefix x:;',
      qr/"opamp_redis_prefix" directive is not allowed here/ ],
    [ 'opamp_config_versions 0', http => 'opamp_config_versions 0;',
      qr/value must be between 1 and 1000\b/ ],
    [ 'opamp_config_versions 1001', http => 'opamp_config_versions 1001;',
      qr/value must be between 1 and 1000\b/ ],
    [ 'opamp_config_versions in a server',
      server => 'opamp_config_versions 5;',
      qr/"opamp_config_versions" directive is not allowed here/ ],
    [ 'opamp_heartbeat_batch_delay over a second',
      http => 'opamp_heartbeat_batch_delay 1001ms;',
      qr/value must be between 0 and 1000\b/ ],
    [ 'opamp_heartbeat_batch_delay in a location',
      location => 'opamp_heartbeat_batch_delay 10ms;',
      qr/"opamp_heartbeat_batch_delay" directive is not allowed here/ ],
    [ 'opamp_heartbeat_recheck not a time',
      http => 'opamp_heartbeat_recheck forever;',
      qr/"opamp_heartbeat_recheck" directive invalid value/ ],
    [ 'opamp_admin_audit_entries 0', http => 'opamp_admin_audit_entries 0;',
      qr/value must be between 1 and 1000000/ ],
    [ 'opamp_admin_audit_entries not a number',
      http => 'opamp_admin_audit_entries many;',
      qr/"opamp_admin_audit_entries" directive invalid number/ ],
    [ 'duplicate opamp_admin_author',
      location => 'opamp_admin_author a; opamp_admin_author b;',
      qr/"opamp_admin_author" directive is duplicate/ ],
    [ 'opamp with an argument', location => 'opamp on;',
      qr/invalid number of arguments in "opamp" directive/ ],
    [ 'duplicate opamp_enrollment_token',
      location => 'opamp_enrollment_token a; opamp_enrollment_token b;',
      qr/"opamp_enrollment_token" directive is duplicate/ ],
    [ 'opamp_enrollment_token without a value',
      location => 'opamp_enrollment_token;',
      qr/invalid number of arguments in "opamp_enrollment_token"/ ],
    [ 'opamp_token_reenroll maybe', location => 'opamp_token_reenroll maybe;',
      qr/invalid value "maybe" in "opamp_token_reenroll" directive, it must be "on" or "off"/ ],
    [ 'a custom capability with a control character',
      location => "opamp_custom_capabilities \"a\tb\";",
      qr/invalid custom capability "a\tb"/ ],
);

for my $b (@bad) {
    my ($name, @o) = @$b;
    my $re = pop @o;
    ($rc, $out) = $t->nginx_t(conf(@o));
    isnt($rc, 0, "nginx -t fails: $name");
    like($out, $re, "  with a clear message: $name") or diag $out;
    like($out, qr/\[emerg\].*in \S*test\.conf:\d+/,
         "  at [emerg], naming file and line: $name");
}

# Redis URLs: the forms docs/directives.md lists are accepted
for my $url ('127.0.0.1:6379', '127.0.0.1', 'localhost', 'localhost:6380',
             'redis://127.0.0.1', 'redis://127.0.0.1:6380',
             'redis://127.0.0.1:6380/2', 'redis://127.0.0.1/',
             'redis://:secret@127.0.0.1:6380/2',
             'redis://user:p%40ss@127.0.0.1/0',
             'redis://user:p@ss@127.0.0.1/0',
             'unix:/run/redis.sock', 'unix:/run/redis.sock?db=3',
             'unix:/run/redis.sock?db=3&password=x&user=u', '[::1]:6379')
{
    ($rc, $out) = $t->nginx_t(with_redis($url));
    is($rc, 0, "redis URL accepted: $url") or diag $out;
}

# and everything else is refused at -t, with the reason
for my $b ([ 'redis://127.0.0.1:notaport', qr/invalid redis address "redis:\/\/127\.0\.0\.1:notaport": invalid port/ ],
           [ '127.0.0.1:notaport', qr/invalid redis address "127\.0\.0\.1:notaport"/ ],
           [ 'redis://127.0.0.1:70000', qr/invalid redis address/ ],
           [ 'unix:', qr/invalid redis unix socket address "unix:": an absolute path is required/ ],
           [ 'unix:?db=1', qr/an absolute path is required/ ],
           [ 'unix:relative.sock', qr/an absolute path is required/ ],
           [ 'redis://127.0.0.1/x', qr/invalid database number in redis address "redis:\/\/127\.0\.0\.1\/x"/ ],
           [ 'redis://127.0.0.1/-1', qr/invalid database number/ ],
           [ 'redis://127.0.0.1/99999999999', qr/invalid database number/ ],
           [ 'unix:/r.sock?db=-1', qr/invalid database number/ ],
           [ 'unix:/r.sock?db=one', qr/invalid database number/ ],
           [ 'unix:/r.sock?color=red', qr/only "db", "user" and "password" parameters are known/ ],
           [ 'unix:/r.sock?db', qr/only "db", "user" and "password"/ ],
           [ 'redis://', qr/invalid redis address|no host/ ],
           [ 'no.such.host.invalid', qr/invalid redis address "no\.such\.host\.invalid"/ ],
           [ 'http://127.0.0.1', qr/invalid redis address "http:\/\/127\.0\.0\.1"/ ],
           [ '""', qr/empty redis address/ ])
{
    my ($url, $re) = @$b;
    ($rc, $out) = $t->nginx_t(with_redis($url));
    isnt($rc, 0, "redis URL refused: $url");
    like($out, $re, "  with a clear message: $url") or diag $out;
    like($out, qr/\[emerg\]/, "  at [emerg]: $url");
}

# a module that is loaded but not used costs nothing and checks nothing
($rc, $out) = $t->nginx_t("load_module " . $t->module . ";\n"
    . "events {}\nhttp { server { listen 127.0.0.1:" . $t->port
    . "; } }\n");
is($rc, 0, 'the module loaded, no opamp directive: passes') or diag $out;

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
    is($t->s2a($body)->{instance_uid}, $uid, 'a ServerToAgent for the agent');
    like($t->agent($uid)->{description} // '', qr/beside-nchan/,
         'state in Redis');
    $t->done;
}

done_testing;
