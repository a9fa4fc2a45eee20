#!/usr/bin/perl

# What src/lua/report.lua costs Redis for the reports that follow a config
# change, alone: each agent's remote config status APPLYING, then APPLIED
# (the supervisor sends its new effective config with it; loadgen's agents
# send the status alone), on agent hashes and status strings that
# report.lua itself wrote from a supervisor's full status (capabilities
# 0x7d47), the change made by admin_config_set.lua (new files for the
# agents' group) and the fan-out's bookkeeping by offered.lua, as a worker
# makes them.  Redis CPU from INFO commandstats: the script's own
# microseconds per report (its commands included), and each command it
# ran, calls and microseconds per report; every round a new version, the
# first round left out.  A script of the same calling convention may be
# given to compare (its lib/ includes are expanded from its own
# directory).  MONITOR=1 prints the commands of one agent's two reports.
#
#   perl bench/report-cost.pl [report.lua]   # AGENTS=256 ROUNDS=6
#                                            # PAYLOAD=supervisor|collector

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/../t/lib";
use IO::Socket::INET;

use OpAMPTest;
use OpAMPCollector;

my $lua = "$FindBin::Bin/../src/lua";
my $script = shift // "$lua/report.lua";
my $N = $ENV{AGENTS} // 256;
my $R = $ENV{ROUNDS} // 6;
my $PAYLOAD = $ENV{PAYLOAD} // 'supervisor';
my $CAPS = 0x7d47;
my $B = 256;

my $t = OpAMPTest->new;
$t->start_redis;

sub load {
    my ($file) = @_;
    my $text = `sh $lua/expand.sh $file`;
    die "cannot expand $file\n" if $?;
    return $t->redis('SCRIPT', 'LOAD', $text);
}

my $report = do {
    my $text = `sh $lua/expand.sh $script`;
    die "cannot expand $script\n" if $?;
    $t->redis('SCRIPT', 'LOAD', $text);
};
my $config_set = load("$lua/admin_config_set.lua");
my $offered = load("$lua/offered.lua");

my @uids = map { sprintf '%08x-0000-7000-8000-%012x', $_, $_ } 1 .. $N;
my $ms = 1796658006990;
my $cs = 'c' x 40;                  # the module's connection settings hash

# the status fields of the agent's full status, as the worker passes them
# (each a message of opamp.proto, protoc's encoding)
sub enc { return $t->encode(@_) }

my ($desc, $health, $comps);
if ($PAYLOAD eq 'collector') {
    (my $d = OpAMPCollector::description('bench-host-1'))
        =~ s/^agent_description \{ (.*) \}$/$1/s;
    (my $h = OpAMPCollector::health('bench-host-1')) =~ s/^health \{ (.*) \}$/$1/s;
    (my $c = OpAMPCollector::components(1))
        =~ s/^available_components \{ (.*) (hash: "[^"]*") \}$/$1/s;
    # the worker puts the list's hash first (docs/redis-schema.md)
    ($desc, $health, $comps) = (enc('AgentDescription', $d),
                                enc('ComponentHealth', $h),
                                enc('AvailableComponents', $2)
                                . enc('AvailableComponents', $c));
} else {
    # bench/loadgen's supervisor agent
    $desc = enc('AgentDescription',
                'identifying_attributes { key: "service.name" value { '
                . 'string_value: "bench" } } non_identifying_attributes { '
                . 'key: "host.name" value { string_value: "loadgen.example" '
                . '} }');
    $health = enc('ComponentHealth', 'healthy: true status: "ok"');
    $comps = enc('AvailableComponents', 'hash: "loadgen-components-1"')
             . enc('AvailableComponents',
                   'components { key: "receivers" value { } }');
}

# the config of version v: its file, and the effective config an agent
# reports once it runs it (a collector's is some KB, loadgen's small)
sub body {
    my ($v) = @_;
    if ($PAYLOAD eq 'collector') {
        (my $e = OpAMPCollector::effective_config($v)) =~ s/.*body: "//s;
        $e =~ s/" content_type.*//s;
        $e =~ s/\\n/\n/g;
        $e =~ s/\\(["\\])/$1/g;
        return $e;
    }
    return "receivers:\n  otlp:\nexporters:\n  debug:\n# version $v\n";
}

sub effective {
    my ($v) = @_;
    (my $b = body($v)) =~ s/(["\\])/\\$1/g;
    $b =~ s/\n/\\n/g;
    return enc('EffectiveConfig', 'config_map { config_map { key: "" '
               . "value { body: \"$b\" content_type: \"text/yaml\" } } }");
}

sub hash_of { return sprintf('%016x', $_[0] * 7919) x 4 }

sub status {
    my ($name, $v) = @_;
    my $h = $v ? join('', map { sprintf '\\%03o', $_ }
                           unpack 'C*', pack 'H*', hash_of($v)) : '';
    return enc('RemoteConfigStatus', ($v ? "last_remote_config_hash: \"$h\" "
                                          : '')
                                     . "status: RemoteConfigStatuses_$name");
}

# report.lua's KEYS and ARGV as the worker sends them
# (src/ngx_http_opamp_store.c): agent i, sequence seq, the status fields
# by name, the remote config status reported
my @fields = qw(description health effective_config remote_config_status
                package_statuses custom_capabilities available_components
                connection_settings_status);
my %seqs;

sub report_args {
    my ($i, $f, $status, $v) = @_;
    my $u = $uids[$i];
    my $seq = $seqs{$u}++ // 0;
    my ($mask, @f) = (0);
    for my $j (0 .. $#fields) {
        my $b = $f->{ $fields[$j] };
        $mask |= 1 << $j if defined $b;
        push @f, $b // '';
    }
    return (5, "opamp:agent:{$u}", "opamp:config:agent:{$u}",
            'opamp:config_version', 'opamp:groups', "opamp:status:{$u}",
            $ms, $u, $seq, $seq ? $seq - 1 : '', $CAPS, "vm:11862:$i",
            'websocket', 'vm', 11862, 'opamp:worker:vm:11862', 90000,
            $seq ? 0 : 1, 0, defined $f->{health} ? 1 : '', $cs, $mask, @f,
            'opamp:', $status // '', '', $v ? hash_of($v) : '', 0,
            '', '', '', '', '', 1048576, '', 16777216, '', '', '', '', '');
}

sub report {
    my $r = $t->redis('EVALSHA', $report, report_args(@_));
    die "report: verdict $r->[1]\n" if $r->[1];
    return $r;
}

# new files for group g1 (version v): the admin API's script, then the
# fan-out's bookkeeping for the agents sent it
sub change {
    my ($v) = @_;
    my $n = $t->redis('EVALSHA', $config_set, 5, 'opamp:config:group:g1',
                      'opamp:groups', 'opamp:config_version',
                      'opamp:config:group:g1', 'opamp:versions:group:g1',
                      'group', 'g1', 'opamp:fleet', $ms, hash_of($v),
                      'service.name=' . ($PAYLOAD eq 'collector'
                                         ? 'otelcol-contrib' : 'bench'),
                      0, 'opamp:', 10, '', '', 'collector.yaml', body($v),
                      'text/yaml')->[0];
    for (my $i = 0; $i < $N; $i += $B) {
        my $last = $i + $B - 1 < $N ? $i + $B - 1 : $N - 1;
        my @a = map { ($uids[$_], $_, 1) } $i .. $last;
        $t->redis('EVALSHA', $offered, 1, 'opamp:fleet:gauges', $ms, 'opamp:',
                  $n, 'vm:11862:', 1, '', 'group:g1', hash_of($v), 'oc', @a);
    }
}

sub stats {
    my %s;
    for (split /\r?\n/, $t->redis('INFO', 'commandstats')) {
        $s{$1} = [ $2, $3 ] if /^cmdstat_(\S+?):calls=(\d+),usec=(\d+)/;
    }
    return \%s;
}

# the fleet: each agent's full status (sequence 0), then the config it is
# owed applied, as a supervisor reports it
sub fleet {
    $t->redis('FLUSHALL');
    %seqs = ();
    change(1);
    my $full = { description => $desc, health => $health,
                 effective_config => effective(0),
                 remote_config_status => status('UNSET'),
                 available_components => $comps };
    my $applying = { remote_config_status => status('APPLYING', 1) };
    my $applied = { remote_config_status => status('APPLIED', 1),
                    effective_config => effective(1) };
    for my $i (0 .. $N - 1) {
        my $r = report($i, $full, 'UNSET');
        die "agent $i: owed " . ($r->[5] || 'nothing') . "\n"
            unless $r->[5] eq hash_of(1);
        report($i, $applying, 'APPLYING', 1);
        report($i, $applied, 'APPLIED', 1);
    }
}

my (%total, %count);

# the reports of every agent, sent back to back on one connection (a
# pipeline): Redis is as busy as under a fleet's reports, not woken for
# each one (a Redis idle between commands runs each several times slower)
sub measure {
    my ($what, $r, $args) = @_;
    my $s = $t->redis_connect;
    my $req = join '', map { OpAMPTest::resp_command('EVALSHA', $report,
                                                     $args->($_)) }
                       0 .. $N - 1;
    my $s0 = stats();
    for (my $off = 0; $off < length $req;) {
        my $n = syswrite($s, $req, length($req) - $off, $off);
        die "redis write: $!\n" unless $n;
        $off += $n;
    }
    for my $i (0 .. $N - 1) {
        my $a = OpAMPTest::_resp_read($s);
        die "agent $i: " . (ref $a eq 'ARRAY' ? "verdict $a->[1]" : $$a)
            . "\n" unless ref $a eq 'ARRAY' && !$a->[1];
    }
    my $s1 = stats();
    close $s;
    return if $r == 1;
    $count{$what} += $N;
    my $acc = $total{$what} //= {};
    for my $c (keys %$s1) {
        my ($n, $us) = ($s1->{$c}[0] - ($s0->{$c}[0] // 0),
                        $s1->{$c}[1] - ($s0->{$c}[1] // 0));
        next if $c eq 'info' || !$n;
        $acc->{$c}[0] += $n;
        $acc->{$c}[1] += $us;
    }
}

# the arguments of each agent's report of a round (its fields encoded
# once for all)
sub round_of {
    my ($name, $v, $effective) = @_;
    my $f = { remote_config_status => status($name, $v) };
    $f->{effective_config} = effective($v) if $effective;
    return sub { report_args($_[0], $f, $name, $v) };
}

my %rounds = (
    applying => sub { round_of('APPLYING', $_[0]) },
    applied_effective => sub { round_of('APPLIED', $_[0], 1) },
    applied => sub { round_of('APPLIED', $_[0]) },
);

# two fleets: the supervisor's APPLIED with its effective config, and
# loadgen's with the status alone
for my $second ('applied_effective', 'applied') {
    fleet();
    for my $r (1 .. $R) {
        my $v = $r + 1;
        change($v);
        measure('applying', $r, $rounds{applying}->($v));
        measure($second, $r, $rounds{$second}->($v));
    }
}

my %label = (applying => 'APPLYING',
             applied_effective => 'APPLIED with the effective config',
             applied => 'APPLIED alone (loadgen)');
printf "report.lua per report, %s agents (caps 0x%x), %d agents, rounds "
       . "2-%d:\n", $PAYLOAD, $CAPS, $N, $R;
for my $what ('applying', 'applied_effective', 'applied') {
    my $acc = $total{$what};
    my $count = $count{$what};
    my $all = $acc->{evalsha}[1];
    my ($inner, @parts) = (0);
    for my $c (sort { $acc->{$b}[1] <=> $acc->{$a}[1] } keys %$acc) {
        next if $c eq 'evalsha';
        $inner += $acc->{$c}[1];
        push @parts, sprintf '%s %.1f (%.2f us)', uc $c,
                     $acc->{$c}[0] / $count, $acc->{$c}[1] / $count;
    }
    printf "  %-34s %6.2f us; commands %.2f us: %s; Lua and the call "
           . "%.2f us\n", $label{$what} . ':', $all / $count,
           $inner / $count, join(', ', @parts), ($all - $inner) / $count;
}

# the commands of one agent's two reports, as Redis ran them
if ($ENV{MONITOR}) {
    my $v = $R + 2;
    change($v);
    my $m = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                  PeerPort => $t->redis_port) or die;
    print $m "MONITOR\r\n";
    <$m>;
    $t->redis('EVALSHA', $report, $rounds{applying}->($v)->(0));
    $t->redis('EVALSHA', $report, $rounds{applied}->($v)->(0));
    $t->redis('PING');
    $m->blocking(0);
    select undef, undef, undef, 0.2;
    while (my $l = <$m>) {
        last if $l =~ /"PING"/;
        $l =~ s/^\+\S+ \[[^\]]*\] //;
        print '    ', substr($l, 0, 150), ($l =~ /\n$/ ? '' : "\n");
    }
}
