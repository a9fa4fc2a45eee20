package OpAMPCollector;

# The full status an OpenTelemetry Collector under the OpAMP supervisor
# reports, as protobuf text for protoc --encode: a contrib build's ~190
# available components with their metadata, a ~5 KB effective config, a
# health tree of 3 pipelines of 4 components, 13 attributes; about 30-35
# KB encoded.  Agents of one build share the component list, agents of
# one config the effective config; description and health are their own.
#
#   my $text = OpAMPCollector::full_status(uid => $bytes, seq => 0,
#                  build => 1, config => 1, host => "h17");

use strict;
use warnings;

my @KINDS = (['receivers', 70], ['processors', 30], ['exporters', 50],
             ['extensions', 25], ['connectors', 15]);

sub esc {
    my ($s) = @_;
    $s =~ s/(["\\])/\\$1/g;
    $s =~ s/\n/\\n/g;
    return $s;
}

sub kv {
    my ($k, $v) = @_;
    return "{ key: \"$k\" value { string_value: \"" . esc($v) . '" } }';
}

# the component list of a build, and its hash (32 bytes, as the
# supervisor computes one over the list)
sub components {
    my ($build) = @_;
    my $out = '';
    for my $kind (@KINDS) {
        my ($name, $n) = @$kind;
        $out .= "components { key: \"$name\" value { ";
        for my $i (1 .. $n) {
            my $c = sprintf '%s%03d', substr($name, 0, 4), $i;
            $out .= "sub_component_map { key: \"$c\" value { "
                . 'metadata ' . kv('code.namespace',
                    "github.com/open-telemetry/opentelemetry-collector-"
                    . "contrib/$name/${c}$name") . ' '
                . 'metadata ' . kv('stability', 'beta') . ' '
                . 'metadata ' . kv('version', "v0.1$build.0") . ' } } ';
        }
        $out .= '} } ';
    }
    my $hash = join '', map { sprintf '\\%03o', ($_ * 7 + $build) % 256 }
                        1 .. 32;
    return "available_components { $out hash: \"$hash\" }";
}

sub effective_config {
    my ($config) = @_;
    my $y = "receivers:\n  otlp:\n    protocols:\n      grpc:\n"
          . "        endpoint: 0.0.0.0:4317\n      http:\n"
          . "        endpoint: 0.0.0.0:4318\n";
    for my $i (1 .. 40) {
        $y .= "  filelog/$i:\n    include: [/var/log/app$i/*.log]\n"
            . "    start_at: end\n    operators:\n"
            . "      - type: regex_parser\n"
            . "        regex: '^(?P<time>\\S+) (?P<level>\\S+) (?P<msg>.*)\$'\n";
    }
    $y .= "processors:\n  batch:\n    timeout: ${config}s\n"
        . "exporters:\n  otlphttp:\n    endpoint: https://collector.example:4318\n"
        . "service:\n  pipelines:\n    logs:\n      receivers: [otlp]\n"
        . "      processors: [batch]\n      exporters: [otlphttp]\n";
    return 'effective_config { config_map { config_map { key: "" value { '
        . 'body: "' . esc($y) . '" content_type: "text/yaml" } } } }';
}

sub health {
    my ($host) = @_;

    # as a collector reports them: one start time (the collector's own,
    # nanoseconds), and each component's status time when it came up, a
    # few milliseconds apart with nanosecond digits of their own; derived
    # from the host so that each agent has its own and runs repeat
    my $seed = unpack '%32C*', $host;
    my $t0 = 1764000000000000000 + $seed * 1000003917;
    my $n = 0;
    my $at = sub { $n++; $t0 + $n * 3141592 + ($seed * 7919 * $n) % 1000000 };
    my $entry = sub {
        return "healthy: true start_time_unix_nano: $t0 "
             . 'status: "StatusOK" status_time_unix_nano: ' . $at->() . ' ';
    };
    my $out = 'health { ' . $entry->();
    for my $p ('traces', 'metrics', 'logs') {
        $out .= "component_health_map { key: \"pipeline:$p\" value { "
              . $entry->();
        for my $c ('receiver:otlp', 'processor:batch',
                   'processor:memory_limiter', 'exporter:otlphttp') {
            $out .= "component_health_map { key: \"$c\" value { "
                  . $entry->() . '} } ';
        }
        $out .= '} } ';
    }
    return "$out }";
}

# a UUID of the host's own, as the collector makes one at its first start
sub instance_id {
    my ($host) = @_;
    my $h = unpack 'H*', pack 'N4', map { unpack('%32C*', "$_$host") * 2654435761 % 4294967296 } 1 .. 4;
    return join '-', substr($h, 0, 8), substr($h, 8, 4), '4' . substr($h, 13, 3),
                     '8' . substr($h, 17, 3), substr($h, 20, 12);
}

sub description {
    my ($host) = @_;
    return 'agent_description { '
        . 'identifying_attributes ' . kv('service.name', 'otelcol-contrib')
        . ' identifying_attributes ' . kv('service.version', '0.114.0')
        . ' identifying_attributes ' . kv('service.instance.id',
                                          instance_id($host))
        . ' non_identifying_attributes ' . kv('os.type', 'linux')
        . ' non_identifying_attributes ' . kv('os.description',
                                              'Debian GNU/Linux 12')
        . ' non_identifying_attributes ' . kv('host.arch', 'amd64')
        . ' non_identifying_attributes ' . kv('host.name', $host)
        . ' non_identifying_attributes ' . kv('host.ip', '10.0.0.17')
        . ' non_identifying_attributes ' . kv('cloud.provider', 'aws')
        . ' non_identifying_attributes ' . kv('cloud.region', 'eu-west-1')
        . ' non_identifying_attributes ' . kv('k8s.namespace.name',
                                              'observability')
        . ' non_identifying_attributes ' . kv('k8s.pod.name',
                                              "otelcol-$host")
        . ' non_identifying_attributes ' . kv('deployment.environment',
                                              'production')
        . ' }';
}

# ReportsStatus, AcceptsRemoteConfig, ReportsEffectiveConfig,
# ReportsRemoteConfig, ReportsHealth, ReportsHeartbeat, ReportsOwnMetrics,
# AcceptsRestartCommand, ReportsAvailableComponents,
# AcceptsOpAMPConnectionSettings
our $CAPABILITIES = 0x1 | 0x2 | 0x4 | 0x1000 | 0x800 | 0x2000 | 0x40
                    | 0x400 | 0x4000 | 0x100;

sub full_status {
    my (%o) = @_;
    my $uid = join '', map { sprintf '\\%03o', ord } split //, $o{uid};
    return "instance_uid: \"$uid\" sequence_num: " . ($o{seq} // 0)
        . " capabilities: $CAPABILITIES " . description($o{host})
        . ' ' . health($o{host}) . ' ' . effective_config($o{config} // 1)
        . ' remote_config_status { status: RemoteConfigStatuses_UNSET } '
        . components($o{build} // 1);
}

1;
