#!/bin/bash
# Writes the seed corpus of every fuzz target into t/fuzz/corpus/<target>/
# as seed-<what>: valid messages of every kind, encoded by protoc from the
# text below (an encoder independent of the module), and a few inputs at
# the edges (the nesting limit, a gzip bomb, every WebSocket length form).
# The inputs of crashes found are crash-<what>, committed by hand, and
# this script leaves them alone.
#
#   t/fuzz/seeds.sh        (from the repository's top directory)
#
# The output is deterministic: run it again after changing it and commit
# what changed.

set -euo pipefail

C=t/fuzz/corpus
PROTO=(-I proto opamp/v1/opamp.proto)

rm -f $C/*/seed-*
mkdir -p $C/{a2s,unpack,json,gzip,wsframe,selector}

enc() {         # enc MESSAGE < text  -> protobuf bytes on stdout
    protoc --encode="opamp.proto.v1.$1" "${PROTO[@]}"
}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# --- a2s: AgentToServer as an agent sends it -----------------------------

UID_='instance_uid: "\x01\x92\xf3\xc4\x5d\x6e\x7f\x80\x9a\x1b\x2c\x3d\x4e\x5f\x6a\x7b"'

enc AgentToServer > $C/a2s/seed-first-message <<EOF
$UID_
sequence_num: 0
capabilities: 0x7fff
agent_description {
  identifying_attributes { key: "service.name" value { string_value: "otelcol" } }
  identifying_attributes { key: "service.instance.id" value { string_value: "a1" } }
  non_identifying_attributes { key: "os.type" value { string_value: "linux" } }
  non_identifying_attributes { key: "host.cpus" value { int_value: 8 } }
  non_identifying_attributes { key: "debug" value { bool_value: true } }
  non_identifying_attributes { key: "load" value { double_value: 0.75 } }
  non_identifying_attributes { key: "blob" value { bytes_value: "\x00\xff\xfe" } }
  non_identifying_attributes { key: "text" value { string_value: "gr\xc3\xbc\xc3\x9f \xe2\x82\xac \xf0\x9f\x98\x80" } }
  non_identifying_attributes {
    key: "list"
    value { array_value { values { string_value: "a" } values { int_value: -1 }
                          values { array_value { values { bool_value: false } } } } }
  }
  non_identifying_attributes {
    key: "map"
    value { kvlist_value { values { key: "k" value { string_value: "v" } }
                           values { key: "n" value { kvlist_value { } } } } }
  }
}
health {
  healthy: true
  start_time_unix_nano: 1700000000000000000
  status: "StatusOK"
  status_time_unix_nano: 1700000000000000001
  component_health_map {
    key: "pipeline:traces"
    value {
      healthy: false
      last_error: "exporter failed"
      component_health_map {
        key: "exporter:otlp"
        value { healthy: false status: "StatusRecoverableError" }
      }
    }
  }
  attributes { key: "k" value { string_value: "v" } }
}
effective_config {
  config_map {
    config_map {
      key: ""
      value { body: "receivers:\n  otlp:\n" content_type: "text/yaml" }
    }
  }
}
remote_config_status {
  last_remote_config_hash: "\x9f\x86\xd0\x81"
  status: RemoteConfigStatuses_FAILED
  error_message: "invalid config"
}
package_statuses {
  packages {
    key: "collector"
    value {
      name: "collector"
      agent_has_version: "0.109.0"
      agent_has_hash: "\x01\x02"
      server_offered_version: "0.110.0"
      server_offered_hash: "\x03\x04"
      status: PackageStatusEnum_Downloading
      download_details { download_percent: 42.5 download_bytes_per_second: 1e6 }
    }
  }
  server_provided_all_packages_hash: "\xa1\xb2"
  error_message: ""
}
flags: 0
connection_settings_request { opamp { certificate_request { csr: "CSR" } } }
custom_capabilities { capabilities: "io.example.a" capabilities: "io.example.b" }
custom_message { capability: "io.example.a" type: "ping" data: "\x00\x01" }
available_components {
  components {
    key: "receivers"
    value {
      metadata { key: "code.namespace" value { string_value: "otlpreceiver" } }
      sub_component_map {
        key: "otlp"
        value { metadata { key: "version" value { string_value: "0.110.0" } } }
      }
    }
  }
  hash: "\xaa\xbb"
}
connection_settings_status {
  last_connection_settings_hash: "\xcc\xdd"
  status: ConnectionSettingsStatuses_APPLIED
}
EOF

enc AgentToServer > $C/a2s/seed-heartbeat <<EOF
$UID_
sequence_num: 7
capabilities: 0x2001
EOF

enc AgentToServer > $C/a2s/seed-request-uid <<EOF
instance_uid: "\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01"
flags: 1
EOF

enc AgentToServer > $C/a2s/seed-disconnect <<EOF
$UID_
sequence_num: 8
agent_disconnect { }
EOF

enc AgentToServer > $C/a2s/seed-config-applied <<EOF
$UID_
sequence_num: 9
remote_config_status { last_remote_config_hash: "\x01\x02\x03" status: RemoteConfigStatuses_APPLIED }
EOF

# a field that comes twice: protobuf merges the two (so does the scan)
{ enc AgentToServer <<EOF
$UID_
agent_description { identifying_attributes { key: "a" value { string_value: "1" } } }
EOF
  enc AgentToServer <<EOF
agent_description { non_identifying_attributes { key: "b" value { string_value: "2" } } }
EOF
} > $C/a2s/seed-field-twice

# fields repeated tens of thousands of times, near the element limit (the
# scan merges them in one pass; joined piece by piece they took seconds,
# past run.sh's -timeout): available_components (0.9 MB), agent_description
# (0.5 MB) and, one level down, a component's value with an attribute each
repeated() {    # repeated WHAT  -> an AgentToServer on stdout
    perl -e '
        sub v { my ($n, $o) = (shift, "");
                while ($n >= 0x80) { $o .= chr(($n & 0x7f) | 0x80); $n >>= 7 }
                return $o . chr($n) }
        sub f { my ($n, $b) = @_; return v($n << 3 | 2) . v(length $b) . $b }
        my %m = (
            components  => sub { f(14, f(2, "h" x 10)) x 65000 },
            description => sub { f(3, f(2, f(1, "k" x 10))) x 32000 },
            health      => sub { f(5, f(6, f(1, "c") . (f(2, f(7, f(1, "k")
                                   . f(2, f(1, "v")))) x 21000))) });
        print f(1, "\x01" x 16), $m{$ARGV[0]}->();
    ' "$1"
}
for w in components description health; do
    repeated $w > $C/a2s/seed-repeated-$w
done

# an unknown field (number 99) is kept as it is
{ enc AgentToServer <<EOF
$UID_
EOF
  printf '\x9a\x06\x03abc'
} > $C/a2s/seed-unknown-field

# AnyValue nested to the limit (100 levels of messages) and one past it
nest() {        # nest N: an AgentDescription attribute N arrays deep
    local i open="" close=""
    for ((i = 0; i < $1; i++)); do
        open+="array_value { values { "
        close+="} } "
    done
    echo "$UID_ agent_description { identifying_attributes { key: \"d\""
    echo "value { $open string_value: \"x\" $close } } }"
}
# agent_description (2), its attribute (3), then 2 levels per array
nest 48 | enc AgentToServer > $C/a2s/seed-nested-at-limit
nest 49 | enc AgentToServer > $C/a2s/seed-nested-past-limit

# --- unpack: index byte (t/fuzz/fuzz_unpack.c's order) + message ---------

unpack() {      # unpack INDEX NAME MESSAGE < text
    { printf "\\x$(printf %02x $1)"; enc "$3"; } > $C/unpack/seed-$2
}

unpack 0 description AgentDescription <<EOF
identifying_attributes { key: "service.name" value { string_value: "otelcol" } }
non_identifying_attributes { key: "l" value { array_value { values { int_value: 1 } } } }
non_identifying_attributes { key: "m" value { kvlist_value { values { key: "b" value { bytes_value: "\xff" } } } } }
EOF
unpack 1 health ComponentHealth <<EOF
healthy: true start_time_unix_nano: 1 last_error: "e" status: "s"
component_health_map { key: "c" value { healthy: false component_health_map { key: "d" value { } } } }
attributes { key: "k" value { double_value: 1.5 } }
EOF
unpack 2 effective-config EffectiveConfig <<EOF
config_map { config_map { key: "a.yaml" value { body: "x: 1" content_type: "text/yaml" } }
             config_map { key: "b.bin" value { body: "\x00\xff" } } }
EOF
unpack 3 remote-config-status RemoteConfigStatus <<EOF
last_remote_config_hash: "\x01" status: RemoteConfigStatuses_APPLYING error_message: "\xe2\x82\xac"
EOF
unpack 4 package-statuses PackageStatuses <<EOF
packages { key: "p" value { name: "p" status: PackageStatusEnum_InstallFailed error_message: "x"
                            download_details { download_percent: 100 } } }
server_provided_all_packages_hash: "\x02"
EOF
unpack 5 custom-capabilities CustomCapabilities <<EOF
capabilities: "io.example.a" capabilities: ""
EOF
unpack 6 available-components AvailableComponents <<EOF
components { key: "exporters" value { sub_component_map { key: "otlp" value { metadata { key: "v" value { string_value: "1" } } } } } }
hash: "\x03"
EOF
unpack 7 connection-settings-status ConnectionSettingsStatus <<EOF
last_connection_settings_hash: "\x04" status: ConnectionSettingsStatuses_FAILED error_message: "no"
EOF
unpack 8 packages-available PackagesAvailable <<EOF
packages { key: "collector" value { type: PackageType_TopLevel version: "0.110.0"
  file { download_url: "https://pkg.example/otelcol.tgz" content_hash: "\x9f\x86" signature: "sig"
         headers { headers { key: "a" value: "b" } } }
  hash: "\x01" } }
all_packages_hash: "\xa1\xb2"
EOF
unpack 9 connection-settings-offers ConnectionSettingsOffers <<EOF
hash: "\x05"
opamp { destination_endpoint: "wss://opamp.example/v1/opamp" heartbeat_interval_seconds: 30
        headers { headers { key: "authorization" value: "Bearer x" } }
        certificate { cert: "c" private_key: "k" ca_cert: "a" }
        tls { ca_pem_contents: "pem" insecure_skip_verify: true min_version: "1.2" cipher_suites: "x" }
        proxy { url: "http://proxy:3128" connect_headers { headers { key: "p" value: "q" } } } }
own_metrics { destination_endpoint: "https://otlp.example:4318/v1/metrics" }
own_traces { destination_endpoint: "https://otlp.example:4318/v1/traces" }
own_logs { destination_endpoint: "https://otlp.example:4318/v1/logs" }
other_connections { key: "kafka" value { destination_endpoint: "kafka:9092" other_settings { key: "topic" value: "t" } } }
EOF

# --- json: index byte (t/fuzz/fuzz_json.c's order) + body as PUT --------

json() {        # json INDEX NAME < body
    { printf "\\x$(printf %02x $1)"; cat; } > $C/json/seed-$2
}

json 0 packages <<'EOF'
{"all_packages_hash": "a1b2",
 "packages": {"collector": {"type": "PackageType_TopLevel", "version": "0.110.0",
   "file": {"download_url": "https://pkg.example/otelcol-0.110.0.tgz",
            "content_hash": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
            "signature": "sig", "headers": {"headers": [{"key": "a", "value": "b"}]}},
   "hash": "0102"},
   "addon": {"type": 1, "version": "1"}}}
EOF
json 1 connection-settings <<'EOF'
{"own_metrics": {"destination_endpoint": "https://otlp.example:4318/v1/metrics",
                 "headers": {"headers": [{"key": "authorization", "value": "Bearer x"}]}},
 "opamp": {"destination_endpoint": "wss://o.example/v1/opamp", "heartbeat_interval_seconds": "30",
           "tls": {"insecure_skip_verify": false, "cipher_suites": ["a", "b"]},
           "certificate": {"cert": "c", "private_key": "k"}},
 "other_connections": {"kafka": {"destination_endpoint": "k:9092", "other_settings": {"topic": "t"}}},
 "hash": ""}
EOF
json 2 description <<'EOF'
{"identifying_attributes": [{"key": "service.name", "value": {"string_value": "otelcol"}}],
 "non_identifying_attributes": [{"key": "n", "value": {"int_value": -5}},
   {"key": "d", "value": {"double_value": 0.5}},
   {"key": "a", "value": {"array_value": {"values": [{"bool_value": true}]}}}]}
EOF
json 3 health <<'EOF'
{"healthy": true, "start_time_unix_nano": 18446744073709551615, "status": "ok",
 "component_health_map": {"c": {"healthy": false, "last_error": "\u00e9"}}}
EOF
json 5 remote-config-status <<'EOF'
{"last_remote_config_hash": "00ff", "status": "RemoteConfigStatuses_FAILED", "error_message": "x"}
EOF
json 7 custom-capabilities <<'EOF'
{"capabilities": ["io.example.a", "\ud83d\ude00"]}
EOF

# --- gzip: limit byte(s) + body ------------------------------------------

gz() {          # gz NAME LIMIT_BYTES < plain
    { printf "$2"; gzip -9n; } > $C/gzip/seed-$1
}

gz message-default-limit '\x01\x00\x00' < $C/a2s/seed-first-message
gz heartbeat-small-limit '\x00\x00\x01' < $C/a2s/seed-heartbeat
gz empty '\x01\x00\x00' < /dev/null
# 1 MB of zeros: over a 64 KB limit, within the default
head -c 1048576 /dev/zero | gz bomb-1m-default '\x01\x00\x00'
head -c 1048576 /dev/zero | gz bomb-1m-small-limit '\x00\xff\xff'
# cut before its trailer
gzip -9n < $C/a2s/seed-first-message > $tmp/gz
{ printf '\x01\x00\x00'; head -c 100 $tmp/gz; } > $C/gzip/seed-truncated

# --- wsframe: 0 + a client frame, or 1 + an OpAMP message ----------------

# frame OPCODE_BYTE PAYLOAD_FILE: a masked client frame (mask 01 02 03 04)
frame() {
    perl -e '
        my ($b0, $file) = @ARGV;
        local $/; open my $f, "<", $file or die; my $p = <$f>;
        my $n = length $p; my $h = chr(0) . chr(hex $b0);
        if ($n < 126) { $h .= chr(0x80 | $n) }
        elsif ($n < 65536) { $h .= chr(0xfe) . pack("n", $n) }
        else { $h .= chr(0xff) . pack("Q>", $n) }
        my @m = (1, 2, 3, 4); my $i = 0;
        $p = join "", map { chr(ord($_) ^ $m[$i++ % 4]) } split //, $p;
        print $h, pack("C4", @m), $p;' "$@"
}

{ printf '\x00'; cat $C/a2s/seed-first-message; } > $tmp/msg
frame 82 $tmp/msg > $C/wsframe/seed-binary-message
printf 'hello' > $tmp/hello
frame 81 $tmp/hello > $C/wsframe/seed-text
frame 01 $tmp/hello > $C/wsframe/seed-text-first-fragment
frame 80 $tmp/hello > $C/wsframe/seed-continuation-last
frame 89 $tmp/hello > $C/wsframe/seed-ping
frame 8a /dev/null > $C/wsframe/seed-pong-empty
printf '\x03\xe8bye \xc3\xa9' > $tmp/close
frame 88 $tmp/close > $C/wsframe/seed-close-1000
printf '\x03\xed' > $tmp/close1005
frame 88 $tmp/close1005 > $C/wsframe/seed-close-1005-reserved
head -c 300 /dev/zero > $tmp/z300
frame 82 $tmp/z300 > $C/wsframe/seed-length-16
head -c 65536 /dev/zero > $tmp/z64k
frame 82 $tmp/z64k > $tmp/f64k
head -c 200 $tmp/f64k > $C/wsframe/seed-length-64
# a 64 MB declared length, no payload: the header alone
printf '\x00\x82\xff\x00\x00\x00\x00\x04\x00\x00\x00\x01\x02\x03\x04' \
    > $C/wsframe/seed-declared-64m
{ printf '\x01\x00'; cat $C/a2s/seed-heartbeat; } > $C/wsframe/seed-opamp-message
printf '\x01\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01' \
    > $C/wsframe/seed-varint-10-bytes
printf '\x01\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01' \
    > $C/wsframe/seed-varint-max
printf '\x01\x80\x00' > $C/wsframe/seed-varint-not-minimal

# --- selector: as an operator writes it ----------------------------------

printf 'env=prod' > $C/selector/seed-one
printf 'env=prod,region=eu-west-1' > $C/selector/seed-two
printf 'k=v=w,k2=' > $C/selector/seed-equals-in-value
printf '' > $C/selector/seed-empty
printf 'a=1,,b=2' > $C/selector/seed-empty-pair
printf 'a=1,' > $C/selector/seed-trailing-comma
printf '=v' > $C/selector/seed-empty-key
printf 'service.name=checkout,deployment.environment=\xc3\xa9' \
    > $C/selector/seed-utf8

ls $C/* | grep -c seed- | sed 's/$/ seeds written/'
