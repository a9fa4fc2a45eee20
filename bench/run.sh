#!/bin/bash
# make bench: a fleet in a box.  Starts its own Redis and nginx (with the
# module and Debian's Nchan) on loopback ports, runs every scenario three
# times with bench/loadgen, prints the medians beside their anchors and
# writes them to bench/results/<date>.md.
#
#   BENCH_SCALES="1000 10000"     agents held (add 50000 100000 if the
#                                 machine allows: each loadgen process and
#                                 nginx worker holds at most ~18k)
#   BENCH_FANOUT="1000 10000"     agents for the config fan-out
#   BENCH_RUNS=3                  repetitions (the median is reported)
#   BENCH_SECONDS=10              length of the throughput runs
#   BENCH_OUT=file                default bench/results/<date>.md
#   BENCH_ONLY="hold fanout"      scenarios to run (default: all of hold
#                                 collector status http fanout storm
#                                 metrics)
#   BENCH_COLLECTORS=5000         agents in the collector scenario, each
#                                 sending a Collector's 39.8 KB full status
#                                 (bench/collector.pl: 3 builds x 2 configs)
#   BENCH_ONLY=fleet              not in the default set: a fleet-wide
#                                 change to BENCH_FLEET agents (default
#                                 100000) that keep heartbeating every 30 s
#   BENCH_FLEET_PAYLOAD=supervisor  or "collector": the fleet's agents
#                                 report loadgen's small description or a
#                                 Collector's 39.8 KB full status; both
#                                 with the supervisor's capabilities
#   BENCH_FLEET_RUNS=1            repetitions of the fleet scenario
#   BENCH_ONLY=rollout            not in the default set: the Redis cost
#                                 of a staged rollout's steps
#                                 (bench/rollout-step.pl) at
#                                 BENCH_ROLLOUT agents (default 10000)
#   BENCH_ONLY=report             not in the default set: report.lua
#                                 alone for the APPLYING and APPLIED
#                                 reports after a change
#                                 (bench/report-cost.pl), supervisor and
#                                 collector agents
#
# "supervisor" agents declare the OpAMP supervisor's capabilities
# (--caps 0x7d47: ReportsStatus, AcceptsRemoteConfig, ReportsEffectiveConfig,
# ReportsOwnMetrics, AcceptsOpAMPConnectionSettings, AcceptsRestartCommand,
# ReportsHealth, ReportsRemoteConfig, ReportsHeartbeat,
# ReportsAvailableComponents, and send a component list); "minimal" agents
# loadgen's default (0x2803). In the fan-out, the clock stops when an agent
# has decoded a ServerToAgent carrying the new remote_config with the
# expected config_hash (computed here from the files, as
# docs/redis-schema.md says, and checked against the admin API's answer).
#
# Everything is bounded in count and time, and targets 127.0.0.0/8 only.

set -euo pipefail

CALLER=$PWD
cd "$(dirname "$0")"
BENCH=$PWD
TOP=$(cd .. && pwd)
MODULE=${NGINX_MODULE:-$TOP/build/ngx_http_opamp_module.so}
NGINX=${NGINX:-/usr/sbin/nginx}
NCHAN=/usr/lib/nginx/modules/ngx_nchan_module.so
SCALES=${BENCH_SCALES:-"1000 10000"}
FANOUT=${BENCH_FANOUT:-"1000 10000"}
RUNS=${BENCH_RUNS:-3}
SECONDS_RUN=${BENCH_SECONDS:-10}
PER_PROC=18000
OUT=${BENCH_OUT:-$BENCH/results/$(date -u +%Y-%m-%d).md}
# a relative BENCH_OUT is relative to where make bench was run
[[ "$OUT" == /* ]] || OUT=$CALLER/$OUT
COLLECTORS=${BENCH_COLLECTORS:-5000}
ONLY=" ${BENCH_ONLY:-hold collector status http fanout storm metrics} "

want() { [[ "$ONLY" == *" $1 "* ]]; }

WORK=$(mktemp -d /tmp/opamp-bench-XXXXXX)
chmod 755 "$WORK"
mkdir -p "$WORK/logs" "$WORK/tmp" "$BENCH/results"

# nginx loads a copy of its own.  A module file rewritten in place under
# a running nginx (cp onto it) changes the code its workers run: they
# crash, and the master respawns workers that crash at once, thousands a
# second (the bursts of segfaults in dmesg on 2026-12-07, reproduced so).
# make build installs by rename, which leaves a loaded file alone; this
# copy also survives whatever else writes the build's file during a run.
cp "$MODULE" "$WORK/ngx_http_opamp_module.so"
MODULE=$WORK/ngx_http_opamp_module.so

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

RPORT=$(free_port)
PORT=$(free_port)

cleanup() {
    [ -f "$WORK/logs/nginx.pid" ] && kill "$(cat "$WORK/logs/nginx.pid")" 2>/dev/null || true
    [ -n "${RPID:-}" ] && kill "$RPID" 2>/dev/null || true
    sleep 1
    rm -rf "$WORK"
}
trap cleanup EXIT

redis-server --bind 127.0.0.1 --port "$RPORT" --save '' --appendonly no \
    --dir "$WORK" --logfile "$WORK/logs/redis.log" &
RPID=$!
for _ in $(seq 50); do redis-cli -p "$RPORT" ping >/dev/null 2>&1 && break; sleep 0.1; done

R() { redis-cli -p "$RPORT" "$@"; }

# start_nginx WORKERS [NCHAN]: NCHAN 0 leaves Nchan out, so that its
# shared memory (touched by the workers as time goes on, and counted in
# their RSS) does not add to the module's memory figures
start_nginx() {
    local workers=$1 nchan=${2:-1} nchan_load="" nchan_conf="" nchan_locs=""
    if [ "$nchan" = 1 ]; then
        nchan_load="load_module $NCHAN;"
        nchan_conf="upstream nchan_redis { nchan_redis_server \"redis://127.0.0.1:$RPORT\"; }"
        # a channel per round (?id=): the FLUSHALL between rounds wipes
        # Nchan's channel keys under a channel its workers still hold, and
        # up to a quarter of the next round's subscribers got nothing
        nchan_locs="location = /sub { nchan_subscriber websocket; nchan_channel_id \$arg_id;
                          nchan_redis_pass nchan_redis; }
        location = /pub { nchan_publisher; nchan_channel_id \$arg_id;
                          nchan_redis_pass nchan_redis; }"
    else
        nchan_locs=""
    fi
    [ -f "$WORK/logs/nginx.pid" ] && {
        kill -QUIT "$(cat "$WORK/logs/nginx.pid")" 2>/dev/null || true
        # the old workers may take a while to close a whole fleet
        for _ in $(seq 600); do [ -f "$WORK/logs/nginx.pid" ] || break; sleep 0.1; done
    }
    cat > "$WORK/nginx.conf" <<EOF
$nchan_load
load_module $MODULE;
worker_processes $workers;
worker_rlimit_nofile 20000;
error_log $WORK/logs/error.log warn;
pid $WORK/logs/nginx.pid;
events { worker_connections 19500; }
http {
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path $WORK/tmp/body;
    proxy_temp_path $WORK/tmp/proxy;
    fastcgi_temp_path $WORK/tmp/fastcgi;
    uwsgi_temp_path $WORK/tmp/uwsgi;
    scgi_temp_path $WORK/tmp/scgi;
    opamp_redis 127.0.0.1:$RPORT;
    $nchan_conf
    server {
        listen 127.0.0.1:$PORT backlog=4096 reuseport;
        location = /v1/opamp { opamp; opamp_heartbeat_interval 30s; }
        location /admin/ { opamp_admin; }
        location = /204 { return 204; }
        location = /metrics { opamp_metrics; }
        location = /stub { stub_status; }
        $nchan_locs
    }
}
EOF
    "$NGINX" -p "$WORK/" -c "$WORK/nginx.conf"
    sleep 1
    # answering (many workers take a while to start): at most 10 s more
    for _ in $(seq 100); do
        curl -s -o /dev/null "http://127.0.0.1:$PORT/204" && break
        sleep 0.1
    done
}

worker_rss_kb() {
    local master total=0
    master=$(cat "$WORK/logs/nginx.pid")
    for p in $(pgrep -P "$master"); do
        total=$((total + $(awk '/VmRSS/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)))
    done
    echo "$total"
}

# the workers' RSS once it no longer moves: new workers touch their
# connection arrays as they start, which must not count as agents' memory
settled_rss_kb() {
    local a b
    a=$(worker_rss_kb)
    for _ in $(seq 40); do
        sleep 0.5
        b=$(worker_rss_kb)
        [ "$a" = "$b" ] && break
        a=$b
    done
    echo "$b"
}

redis_mem() { R info memory | awk -F: '/^used_memory:/ {print $2}' | tr -d '\r'; }

median() { sort -g | awk '{a[NR]=$1} END {print (NR ? a[int((NR+1)/2)] : 0)}'; }

field() { tr ' ' '\n' | awk -F= -v k="$1" '$1==k {print $2}' | tail -1; }

# run N agents over as many loadgen processes as needed; prints each
# process's lines
# each run takes fresh source addresses 127.0.0.X, so that no port is
# still held from the run before (kept in a file: runs are in subshells)
echo 2 > "$WORK/src"
loadgen_many() {
    local n=$1; shift
    local procs=$(( (n + PER_PROC - 1) / PER_PROC )) i per pids=() src
    for i in $(seq 0 $((procs - 1))); do
        # n agents in all: the first n % procs processes take one more
        per=$(( n / procs + (i < n % procs ? 1 : 0) ))
        src=$(cat "$WORK/src")
        # loadgen puts 1000 agents on each source address
        next=$(( src + (per + 999) / 1000 ))
        echo $(( next > 230 ? 2 : next )) > "$WORK/src"
        "$BENCH/loadgen" --port "$PORT" --agents "$per" --src-base "$src" \
            --seed $((i + 1)) "$@" > "$WORK/lg.$i" &
        pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p" || true; done
    cat "$WORK"/lg.*
    rm -f "$WORK"/lg.*
}

sum_field() { awk -v k="$1" '{for (i=1;i<=NF;i++) {split($i,a,"="); if (a[1]==k) s+=a[2]}} END {print s+0}'; }
max_field() { awk -v k="$1" '{for (i=1;i<=NF;i++) {split($i,a,"="); if (a[1]==k && a[2]>m) m=a[2]}} END {print m+0}'; }

ROWS=()
# row SCENARIO MODULE ANCHOR RATIO [TARGET [MET]]
row() {
    ROWS+=("$(printf '| %s | %s | %s | %s | %s | %s |' "$1" "$2" "$3" "$4" \
              "${5:-none}" "${6:-—}")")
    echo "${ROWS[-1]}"
}

SUP=0x7d47

# met VALUE OP LIMIT: "met" or "not met" (OP: le or ge)
met() {
    awk -v v="$1" -v op="$2" -v l="$3" 'BEGIN {
        ok = (op == "le") ? (v <= l) : (v >= l); print (ok ? "met" : "**not met**") }'
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", (b>0 ? a/b : 0)}'; }

# config_hash of one file with no content type (docs/redis-schema.md)
cfg_hash() {
    python3 -c 'import hashlib, struct, sys
n, b = sys.argv[1].encode(), sys.argv[2].encode()
print(hashlib.sha256(struct.pack(">I", len(n)) + n + struct.pack(">I", 0)
                     + struct.pack(">Q", len(b)) + b).hexdigest())' "$1" "$2"
}

redis_cpu() {
    R info cpu | tr -d '\r' \
        | awk -F: '/^used_cpu_(sys|user):/ {s += $2} END {printf "%.6f", s}'
}

# fanout_many N TRIGGER [loadgen args]: N agents over as many loadgen
# processes as needed, each writing a ready file once its agents have
# reported; then FO_BASELINE seconds (Redis CPU read around them: the
# cost of whatever the agents do meanwhile, heartbeats), the change's
# time into the go file and TRIGGER run (its output in $WORK/fo.trig);
# Redis CPU read when every process has written its done file and again
# FO_SETTLE seconds after (bookkeeping after the frames, and the agents'
# APPLIED reports, --ack-delay after each got it, count to the change).
# Sets FO_OUT (the processes' lines), FO_CPU_BASE (CPU seconds a second
# before), FO_CPU_CHANGE (CPU seconds of the change until FO_SETTLE after,
# the baseline's rate taken off), FO_CPU_FANOUT (the same until all had
# it), FO_READY, FO_SECONDS (go to all done); percentiles:
# lat_pct KIND P over $WORK/fo.lat.* (p: the change, b/d: heartbeats
# before / during it)
fanout_many() {
    local n=$1 trig=$2; shift 2
    local procs=$(( (n + PER_PROC - 1) / PER_PROC )) i per pids=() src next
    local dur=${FO_DURATION:-60} c0 c1 c2 c3 t0 t1 t2 t3 t4
    rm -f "$WORK"/fo.*
    for i in $(seq 0 $((procs - 1))); do
        per=$(( n / procs + (i < n % procs ? 1 : 0) ))
        src=$(cat "$WORK/src")
        next=$(( src + (per + 999) / 1000 ))
        echo $(( next > 230 ? 2 : next )) > "$WORK/src"
        "$BENCH/loadgen" --port "$PORT" --agents "$per" --src-base "$src" \
            --seed $((i + 1)) --mode fanout --duration "$dur" \
            --ready-file "$WORK/fo.ready.$i" --go-file "$WORK/fo.go" \
            --done-file "$WORK/fo.done.$i" --lat-file "$WORK/fo.lat.$i" \
            --base-file "$WORK/fo.base" \
            --linger $(( ${FO_SETTLE:-4} + 1 )) "$@" > "$WORK/fo.out.$i" &
        pids+=($!)
    done
    # bounded by the processes' own --duration
    t0=$(date +%s)
    while [ "$(ls "$WORK"/fo.ready.* 2>/dev/null | wc -l)" -lt "$procs" ] \
          && [ $(( $(date +%s) - t0 )) -lt "$dur" ]; do
        sleep 0.2
    done
    FO_READY=$(cat "$WORK"/fo.ready.* 2>/dev/null | awk '{s += $1} END {print s + 0}')
    FO_RMEM=$(redis_mem); FO_RSS=$(worker_rss_kb)
    # the connect burst's last writes, and the agents' APPLIED for the
    # config they got when they connected, out of the baseline: at least
    # 3 s, and until Redis's CPU over 2 s is within 20% of the 2 s before
    # (at most FO_QUIET seconds)
    sleep 3
    if [ "${FO_BASELINE:-1}" -gt 1 ]; then
        local prev=-1 r ca cb k
        for k in $(seq $(( ${FO_QUIET:-60} / 2 ))); do
            ca=$(redis_cpu); sleep 2; cb=$(redis_cpu)
            r=$(awk -v a="$ca" -v b="$cb" 'BEGIN {printf "%.4f", (b - a) / 2}')
            awk -v r="$r" -v p="$prev" 'BEGIN {exit !(p >= 0 && r - p <= 0.2 * p + 0.002 && p - r <= 0.2 * p + 0.002)}' && break
            prev=$r
        done
        echo "# quiet after $((k * 2)) s more: Redis CPU $r s a second" >&2
    fi
    touch "$WORK/fo.base"
    c0=$(redis_cpu); t1=$(date +%s.%N)
    sleep "${FO_BASELINE:-1}"
    c1=$(redis_cpu); t2=$(date +%s.%N)
    echo "$t2" > "$WORK/fo.go.tmp" && mv "$WORK/fo.go.tmp" "$WORK/fo.go"
    sh -c "$trig" > "$WORK/fo.trig" 2>&1 || true
    t0=$(date +%s)
    while [ "$(ls "$WORK"/fo.done.* 2>/dev/null | wc -l)" -lt "$procs" ] \
          && [ $(( $(date +%s) - t0 )) -lt $(( dur + 5 )) ]; do
        sleep 0.05
    done
    c3=$(redis_cpu); t3=$(date +%s.%N)
    sleep "${FO_SETTLE:-4}"
    c2=$(redis_cpu); t4=$(date +%s.%N)
    for p in "${pids[@]}"; do wait "$p" || true; done
    FO_OUT=$(cat "$WORK"/fo.out.*)
    echo "$FO_OUT" | sed 's/^/# loadgen: /' >&2
    FO_CPU_BASE=$(awk -v a="$c0" -v b="$c1" -v s="$t1" -v e="$t2" \
                  'BEGIN {printf "%.6f", (b - a) / (e - s)}')
    FO_CPU_CHANGE=$(awk -v a="$c1" -v b="$c2" -v s="$t2" -v e="$t4" -v r="$FO_CPU_BASE" \
                  'BEGIN {printf "%.6f", (b - a) - r * (e - s)}')
    # the fan-out alone (the change's time until every agent had it) and
    # what came after (the agents' APPLIED reports, bookkeeping)
    FO_CPU_FANOUT=$(awk -v a="$c1" -v b="$c3" -v s="$t2" -v e="$t3" -v r="$FO_CPU_BASE" \
                  'BEGIN {printf "%.6f", (b - a) - r * (e - s)}')
    FO_SECONDS=$(awk -v s="$t2" -v e="$t3" 'BEGIN {printf "%.2f", e - s}')
}

lat_pct() {
    cat "$WORK"/fo.lat.* 2>/dev/null | awk -v k="$1" '$1 == k {print $2}' | sort -g \
        | awk -v p="$2" '{a[NR] = $1} END {
              if (!NR) {print 0; exit}
              i = (p >= 1) ? NR : int(p * (NR - 1)) + 1; printf "%.1f", a[i] }'
}
lat_n() { cat "$WORK"/fo.lat.* 2>/dev/null | awk -v k="$1" '$1 == k {n++} END {print n + 0}'; }

# the admin API's answer names the hash the agents must get
check_hash() {
    if ! grep -q "\"config_hash\":\"$1\"" "$WORK/fo.trig"; then
        echo "warning: the change's hash is not $1: $(cat "$WORK/fo.trig")" >&2
        HASH_MISMATCH=1
    fi
}
HASH_MISMATCH=0

echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r)"
echo "nginx $("$NGINX" -v 2>&1 | sed 's/.*\///'), redis $(redis-server --version | awk '{print $3}' | sed 's/v=//'), runs: $RUNS (median)"
echo
echo "commit: $(git -C "$TOP" rev-parse --short HEAD 2>/dev/null || echo unknown); the machine is shared with other builds and tests: compare ratios from the same run"
echo
row "scenario" "ngx_http_opamp_module" "anchor" "ratio" "target" "met"
row "---" "---" "---" "---" "---" "---"

# --- hold N WebSocket agents ------------------------------------------------

if want hold; then

    for n in $SCALES; do
        workers=$(( (n + PER_PROC - 1) / PER_PROC )); [ "$workers" -lt 2 ] && workers=2
        rates=(); mem=(); rmem=(); nmem=()
        for run in $(seq "$RUNS"); do
            start_nginx "$workers" 0; R flushall >/dev/null
            base=$(settled_rss_kb); rbase=$(redis_mem)
            out=$(loadgen_many "$n" --mode hold --duration $((n / 500 + 20)) --heartbeat 30 &
                  sleep $((n / 500 + 12)); echo "rss=$(worker_rss_kb) rmem=$(redis_mem)"; wait)
            reported=$(echo "$out" | sum_field reported)
            held=$(echo "$out" | sum_field held)
            secs=$(echo "$out" | max_field connect_s)
            rss=$(echo "$out" | field rss); rm=$(echo "$out" | field rmem)
            rates+=("$(awk -v r="$reported" -v s="$secs" 'BEGIN {printf "%.0f", (s>0 ? r/s : 0)}')")
            mem+=("$(awk -v a="$rss" -v b="$base" -v n="$n" 'BEGIN {printf "%.0f", (a-b)*1024/n}')")
            rmem+=("$(awk -v a="$rm" -v b="$rbase" -v n="$n" 'BEGIN {printf "%.0f", (a-b)/n}')")

            # anchor: as many idle Nchan WebSocket subscribers
            start_nginx "$workers"
            base=$(settled_rss_kb)
            out=$(loadgen_many "$n" --mode hold --raw --path "/sub?id=hold$run" --duration $((n / 500 + 20)) &
                  sleep $((n / 500 + 12)); echo "rss=$(worker_rss_kb)"; wait)
            rss=$(echo "$out" | field rss)
            # subscribers still held when the hold ended
            nsubs=$(echo "$out" | sum_field held)
            nmem+=("$(awk -v a="$rss" -v b="$base" -v n="$nsubs" 'BEGIN {printf "%.0f", (n>0 ? (a-b)*1024/n : 0)}')")
        done
        r=$(printf '%s\n' "${rates[@]}" | median)
        m=$(printf '%s\n' "${mem[@]}" | median)
        rm=$(printf '%s\n' "${rmem[@]}" | median)
        nm=$(printf '%s\n' "${nmem[@]}" | median)
        row "hold $n WebSocket agents: connect + first report" "$r agents/s ($reported answered, $held held to the end)" "—" "—"
        row "hold $n: nginx memory per agent" "$m B" "Nchan idle subscriber: $nm B ($nsubs held to the end)" \
            "$(awk -v a="$m" -v b="$nm" 'BEGIN {printf "%.2fx", (b>0 ? a/b : 0)}')"
        row "hold $n: Redis memory per agent" "$rm B" "—" "—"
    done
fi

# --- collector-sized agents ---------------------------------------------------
#
# What a Collector under the OpAMP supervisor reports (t/lib/OpAMPCollector.pm:
# ~190 components, a 5 KB effective config, 3x4 health entries, 13
# attributes; 39.8 KB), 3 builds x 2 configs across the fleet, instead of
# the minimal agent of the other scenarios.

if want collector; then

    files=$(perl "$BENCH/collector.pl" "$WORK/collector" 3 2)
    n=$COLLECTORS
    mem=(); rmem=(); rown=(); rst=(); hp=(); sp=(); sb=()
    for run in $(seq "$RUNS"); do
        start_nginx 2 0; R flushall >/dev/null
        base=$(settled_rss_kb); rbase=$(redis_mem)
        out=$(loadgen_many "$n" --mode hold --full "$files" --duration $((n / 200 + 20)) --heartbeat 30 &
              sleep $((n / 200 + 12)); echo "rss=$(worker_rss_kb) rmem=$(redis_mem)"; wait)
        rss=$(echo "$out" | field rss); rm=$(echo "$out" | field rmem)
        held=$(echo "$out" | sum_field held)
        mem+=("$(awk -v a="$rss" -v b="$base" -v n="$n" 'BEGIN {printf "%.0f", (a-b)*1024/n}')")
        rmem+=("$(awk -v a="$rm" -v b="$rbase" -v n="$n" 'BEGIN {printf "%.0f", (a-b)/n}')")
        # an agent's own hash and status string, all counted (SAMPLES 0)
        k=$(R --scan --pattern 'opamp:agent:*' | awk 'NR == 1')
        rown+=("$(R memory usage "$k" samples 0)")
        rst+=("$(R memory usage "${k/agent:/status:}" samples 0)")

        R flushall >/dev/null
        hp+=("$("$BENCH/loadgen" --port "$PORT" --mode http --full "$files" --agents 500 --duration "$SECONDS_RUN" | field rate)")

        # as the supervisor sends: the full status, then heartbeats
        R flushall >/dev/null
        sb+=("$("$BENCH/loadgen" --port "$PORT" --mode status --full "$files" --agents 200 --duration "$SECONDS_RUN" | field rate)")

        # the worst case: every message the full status (a reconnect storm)
        R flushall >/dev/null
        sp+=("$("$BENCH/loadgen" --port "$PORT" --mode status --full "$files" --full-every 1 --agents 200 --duration "$SECONDS_RUN" | field rate)")
    done
    m=$(printf '%s
' "${mem[@]}" | median)
    rm=$(printf '%s
' "${rmem[@]}" | median)
    ro=$(printf '%s
' "${rown[@]}" | median)
    rs=$(printf '%s
' "${rst[@]}" | median)
    s=$(printf '%s
' "${sp[@]}" | median)
    sh=$(printf '%s
' "${sb[@]}" | median)
    h=$(printf '%s
' "${hp[@]}" | median)
    row "hold $n collector-sized agents (39.8 KB full status): nginx memory per agent" "$m B ($held held to the end)" "—" "—"
    row "hold $n collector-sized agents: Redis memory per agent" "$rm B in all ($ro B its hash, $rs B its status)" "one copy each: ~39,300 B" \
        "$(awk -v a="$rm" 'BEGIN {printf "%.2fx", a/39300}')"
    row "HTTP polling, 500 collector-sized agents (full status first)" "$h /s" "—" "—"
    row "status messages persisted per second, 200 collector-sized agents (full status first, then heartbeats)" "$sh /s" "—" "—"
    row "status messages persisted per second, 200 collector-sized agents, each message its full status" "$s /s" "—" "—"
fi

# --- status throughput ------------------------------------------------------

if want status; then

    start_nginx 2
    tp=(); rb=()
    SHA=$(R script load "$(sh "$TOP/src/lua/expand.sh" "$TOP/src/lua/report.lua")")
    for run in $(seq "$RUNS"); do
        R flushall >/dev/null
        out=$("$BENCH/loadgen" --port "$PORT" --mode status --agents 200 --duration "$SECONDS_RUN")
        tp+=("$(echo "$out" | field rate)")
        # the same script, from redis-benchmark, with a heartbeat's arguments
        rb+=("$(redis-benchmark -p "$RPORT" -c 50 -n 200000 -r 100000 -q \
            EVALSHA "$SHA" 5 'opamp:agent:{__rand_int__}' 'opamp:config:agent:{__rand_int__}' \
            opamp:config_version opamp:groups 'opamp:status:{__rand_int__}' \
            1795550000000 u 1 0 3 'h:1:1' websocket h 1 \
            opamp:worker:h:1 90000 0 0 '' "$(printf '%040d' 0)" 0 '' '' '' '' '' '' '' '' \
            opamp: '' '' '' 0 '' '' '' '' '' 262144 '' 65536 '' '' '' '' '' \
            2>/dev/null \
            | awk '{for (i=1;i<=NF;i++) if ($(i+1) ~ /requests/) {print $i; exit}}')")
    done
    t=$(printf '%s\n' "${tp[@]}" | median); b=$(printf '%s\n' "${rb[@]}" | median)
    row "status messages persisted per second (200 WebSocket agents)" "$t /s" \
        "redis-benchmark, same script: $b /s" \
        "$(awk -v a="$t" -v b="$b" 'BEGIN {printf "%.2fx", (b>0 ? a/b : 0)}')"
fi

# --- HTTP polling -----------------------------------------------------------

if want http; then

    # 50 agents leave the module waiting on Redis round trips (each agent
    # has one request out); 500 keep every process busy, as a fleet does.
    # Alternating: supervisor agents, return 204, minimal agents.
    start_nginx 2
    for agents in 50 500; do
        hs=(); hm=(); h204=()
        for run in $(seq "$RUNS"); do
            R flushall >/dev/null
            hs+=("$("$BENCH/loadgen" --port "$PORT" --mode http --caps $SUP --agents "$agents" --duration "$SECONDS_RUN" | field rate)")
            h204+=("$("$BENCH/loadgen" --port "$PORT" --mode http --path /204 --agents "$agents" --duration "$SECONDS_RUN" | field rate)")
            R flushall >/dev/null
            hm+=("$("$BENCH/loadgen" --port "$PORT" --mode http --agents "$agents" --duration "$SECONDS_RUN" | field rate)")
        done
        a=$(printf '%s\n' "${hs[@]}" | median); b=$(printf '%s\n' "${h204[@]}" | median)
        m=$(printf '%s\n' "${hm[@]}" | median)
        r=$(ratio "$a" "$b")
        row "HTTP polling: polls per second, $agents keep-alive supervisor agents (caps $SUP, component list)" "$a /s" \
            "nginx return 204: $b /s" "${r}x" ">= 0.7x" "$(met "$r" ge 0.7)"
        r=$(ratio "$m" "$b")
        row "HTTP polling: polls per second, $agents keep-alive minimal agents (caps 0x2803)" "$m /s" \
            "the same return 204" "${r}x" ">= 0.7x" "$(met "$r" ge 0.7)"
    done
fi

# --- config fan-out -----------------------------------------------------------

# two kinds of change: new files for the group the agents already have a
# config from (a rollout: each agent keeps its group, only the hash moves),
# and a new group (every agent is matched against every group again).
# Rounds alternate: supervisor agents (new files, new group), Nchan's
# broadcast to as many raw subscribers, minimal agents (both changes).

# fanout_change N KIND CAPS RUN: one round; prints "received p50 p99 max
# redis_cpu_us_per_agent"
fanout_change() {
    local n=$1 kind=$2 caps=$3 run=$4 body before h
    # a fresh Redis and fresh workers: a worker keeps its view of the
    # fleet's config version and of its agents, which a FLUSHALL under it
    # would turn into a version going back (and the fan-out to its
    # fallback for agents it cannot vouch for)
    R flushall >/dev/null
    start_nginx "$workers"
    body="run $run $kind $caps $RANDOM"
    if [ "$kind" = files ]; then
        curl -s -o /dev/null -X PUT "http://127.0.0.1:$PORT/admin/configs/groups/bench" \
            -d "{\"selector\":\"service.name=bench\",\"files\":{\"c.yaml\":{\"body\":\"before $run\"}}}"
    fi
    h=$(cfg_hash c.yaml "$body")
    fanout_many "$n" "curl -s -X PUT http://127.0.0.1:$PORT/admin/configs/groups/bench -d '{\"selector\":\"service.name=bench\",\"files\":{\"c.yaml\":{\"body\":\"$body\"}}}'" \
        --caps "$caps" --expect-hash "$h" --ack-delay 2
    check_hash "$h"
    got=$(echo "$FO_OUT" | sum_field received)
    echo "$got $(lat_pct p 0.5) $(lat_pct p 0.99) $(lat_pct p 1) \
          $(awk -v c="$FO_CPU_FANOUT" -v n="$got" 'BEGIN {printf "%.1f", (n > 0 ? c * 1e6 / n : 0)}') \
          $(awk -v c="$FO_CPU_CHANGE" -v n="$got" 'BEGIN {printf "%.1f", (n > 0 ? c * 1e6 / n : 0)}')"
}

if want fanout; then

    for n in $FANOUT; do
        workers=$(( (n + PER_PROC - 1) / PER_PROC )); [ "$workers" -lt 2 ] && workers=2
        start_nginx "$workers"
        declare -A res=()
        for run in $(seq "$RUNS"); do
            res[sf]+="$(fanout_change "$n" files $SUP "$run")
"
            res[sg]+="$(fanout_change "$n" group $SUP "$run")
"
            fanout_many "$n" "curl -s -X POST 'http://127.0.0.1:$PORT/pub?id=r$run-$n' -d 'run $run'" \
                --raw --path "/sub?id=r$run-$n"
            res[nc]+="$(echo "$FO_OUT" | sum_field received) $(lat_pct p 0.5) $(lat_pct p 0.99) $(lat_pct p 1) 0 0
"
            res[mf]+="$(fanout_change "$n" files 0x2803 "$run")
"
            res[mg]+="$(fanout_change "$n" group 0x2803 "$run")
"
        done
        # col KEY I: the median of column I over the runs
        col() { echo -n "${res[$1]}" | awk -v i="$2" 'NF {print $i}' | median; }
        b=$(col nc 3)
        nchan="Nchan broadcast to $n raw subscribers, received / p50 / p99 / max: $(col nc 1) / $(col nc 2) / $b / $(col nc 4) ms"
        for k in sf sg mf mg; do
            case $k in
                sf) label="config change to $n supervisor agents (caps $SUP, decoding), new files for their group" ;;
                sg) label="config change to $n supervisor agents (caps $SUP, decoding), a new group" ;;
                mf) label="config change to $n minimal agents (caps 0x2803, decoding), new files for their group" ;;
                mg) label="config change to $n minimal agents (caps 0x2803, decoding), a new group" ;;
            esac
            a=$(col $k 3); r=$(ratio "$a" "$b")
            row "$label: received / p50 / p99 / max; Redis CPU per agent reached, until all had it / with their APPLIED reports (2 s after)" \
                "$(col $k 1) / $(col $k 2) / $a / $(col $k 4) ms; $(col $k 5) / $(col $k 6) µs" \
                "$nchan" "${r}x (p99)" "<= 0.8x" "$(met "$r" le 0.8)"
            nchan="the same broadcast"
        done
        unset res
    done
fi

# --- a fleet-wide change while the fleet heartbeats -------------------------
#
# BENCH_FLEET agents (default 100,000) with the supervisor's capabilities,
# heartbeating every 30 s (spread over the interval); once all have
# reported and Redis's CPU is steady (the connect burst over), 15 s of
# heartbeats alone (Redis CPU: the baseline; heartbeat
# round trips "before"), then one change for all of them (new files for
# their group; in a second session of fresh agents, a new group); the
# clock stops for each when it has decoded the new config; heartbeat round
# trips "during" are those from the change until the process's agents all
# have it.  Not in the default set: about 2 x (connect + 25 s) per run.

if want fleet; then

    n=${BENCH_FLEET:-100000}
    payload=${BENCH_FLEET_PAYLOAD:-supervisor}
    full=(); sel=service.name=bench; what="loadgen's small description"
    if [ "$payload" = collector ]; then
        files=$(perl "$BENCH/collector.pl" "$WORK/collector" 3 2)
        full=(--full "$files"); sel=service.name=otelcol-contrib
        what="a Collector's 39.8 KB full status"
    fi
    workers=$(( (n + PER_PROC - 1) / PER_PROC )); [ "$workers" -lt 2 ] && workers=2
    for run in $(seq "${BENCH_FLEET_RUNS:-1}"); do
        for kind in files group; do
            # no Nchan: its shared memory would count in the workers' RSS;
            # Redis flushed first (see fanout_change)
            R flushall >/dev/null
            start_nginx "$workers" 0
            body="fleet $run $kind $RANDOM"
            if [ "$kind" = files ]; then
                curl -s -o /dev/null -X PUT "http://127.0.0.1:$PORT/admin/configs/groups/fleet" \
                    -d "{\"selector\":\"$sel\",\"files\":{\"c.yaml\":{\"body\":\"before $run\"}}}"
            fi
            h=$(cfg_hash c.yaml "$body")
            m0=$(redis_mem); rss0=$(settled_rss_kb)
            # Redis's own idle cost (its cron, the workers' links), to
            # take off the heartbeats' baseline
            i0=$(redis_cpu); sleep 5; idle=$(awk -v a="$i0" -v b="$(redis_cpu)" 'BEGIN {printf "%.6f", (b - a) / 5}')
            FO_BASELINE=15 FO_DURATION=$(( n / 200 + 120 )) FO_SETTLE=6 \
            fanout_many "$n" "curl -s -X PUT http://127.0.0.1:$PORT/admin/configs/groups/fleet -d '{\"selector\":\"$sel\",\"files\":{\"c.yaml\":{\"body\":\"$body\"}}}'" \
                --caps $SUP --heartbeat 30 --ack-delay 2 --expect-hash "$h" "${full[@]}"
            check_hash "$h"
            got=$(echo "$FO_OUT" | sum_field received)
            label="fleet-wide change to $n supervisor agents (caps $SUP, $what, decoding, heartbeating every 30 s)"
            [ "$kind" = files ] && label="$label, new files for their group" || label="$label, a new group"
            row "$label: ready / received / p50 / p99 / max; all had it after" \
                "$FO_READY / $got / $(lat_pct p 0.5) / $(lat_pct p 0.99) / $(lat_pct p 1) ms; ${FO_SECONDS} s" \
                "—" "—" "measured (issue 20)" "$( [ "$got" -ge "$n" ] && echo "all received" || echo "**$((n - got)) missed**")"
            cpc=$(awk -v c="$FO_CPU_FANOUT" -v n="$got" 'BEGIN {printf "%.2f", (n > 0 ? c * 1e6 / n : 0)}')
            # a baseline that moved (a backlog still draining) can make
            # the change's share negative: no figure then
            cmet=$(met "$cpc" le 2)
            awk -v c="$cpc" 'BEGIN {exit !(c <= 0)}' && cmet="not measured: the baseline moved"
            row "$label: Redis CPU for the change (INFO cpu, the heartbeats' rate taken off): until all had it; with the 6 s after (their APPLIED reports, 2 s after each got it)" \
                "$(awk -v c="$FO_CPU_FANOUT" 'BEGIN {printf "%.0f", c * 1000}') ms, $cpc µs per agent reached; $(awk -v c="$FO_CPU_CHANGE" -v n="$got" 'BEGIN {printf "%.0f ms, %.2f", c * 1000, (n > 0 ? c * 1e6 / n : 0)}') µs per agent" \
                "heartbeats alone: $(awk -v c="$FO_CPU_BASE" 'BEGIN {printf "%.1f", c * 1000}') ms a second" \
                "—" "<= 2 µs per agent reached (issue 20 item 2)" "$cmet"
            # per heartbeat answered in the 15 s (a loaded machine sends
            # fewer than n / 30 a second)
            nb=$(lat_n b)
            hb=$(awk -v c="$FO_CPU_BASE" -v i="$idle" -v b="$nb" 'BEGIN {printf "%.2f", (b > 0 ? (c - i) * 1e6 / (b / 15) : 0)}')
            row "$label: Redis CPU per heartbeat before the change ($nb answered in 15 s; Redis idle, $(awk -v i="$idle" 'BEGIN {printf "%.1f", i * 1000}') ms a second, taken off)" "$hb µs" "—" "—" \
                "<= 10 µs (issue 20 item 1)" "$(met "$hb" le 10)"
            row "$label: heartbeat round trip p50 / p99, before the change (15 s) and during it" \
                "before $(lat_pct b 0.5) / $(lat_pct b 0.99) ms ($(lat_n b) beats); during $(lat_pct d 0.5) / $(lat_pct d 0.99) ms ($(lat_n d) beats, $(echo "$FO_OUT" | sum_field beat_ended_by_push) ended by the push)" \
                "—" "—" "measured" "—"
            row "$label: memory per agent once all reported" \
                "Redis $(awk -v a="$FO_RMEM" -v b="$m0" -v n="$n" 'BEGIN {printf "%.0f", (a - b) / n}') B, nginx $(awk -v a="$FO_RSS" -v b="$rss0" -v n="$n" 'BEGIN {printf "%.0f", (a - b) * 1024 / n}') B" \
                "—" "—" "none" "—"
        done
    done
fi

# --- reconnect storm -------------------------------------------------------------

if want storm; then

    n=$(echo "$SCALES" | awk '{print $NF}')
    workers=$(( (n + PER_PROC - 1) / PER_PROC )); [ "$workers" -lt 2 ] && workers=2
    start_nginx "$workers"
    rs=(); fs=()
    for run in $(seq "$RUNS"); do
        R flushall >/dev/null
        out=$(loadgen_many "$n" --mode reconnect --duration 120)
        rs+=("$(echo "$out" | max_field seconds)")
        fs+=("$(echo "$out" | sum_field full_state_asked)")
        back=$(echo "$out" | sum_field back)
    done
    row "reconnect storm: $n agents dropped at once, all back" \
        "$(printf '%s\n' "${rs[@]}" | median) s ($back back, $(printf '%s\n' "${fs[@]}" | median) asked for full state)" "—" "—"
fi

# --- a scrape of opamp_metrics at 1,000 and 100,000 agents ----------------
#
# The agents are written straight into Redis (an index entry and a hash
# with its gauge part each, and the gauges hash as the scripts keep it):
# a scrape reads two counts of the index and the gauges hash, so its cost
# must not move with the fleet.  Beside it, stub_status on the same nginx.

if want metrics; then

    start_nginx 2 0
    for n in 1000 100000; do
        R flushall >/dev/null
        R eval "for i = 1, tonumber(ARGV[1]) do
                    local uid = string.format('00000000-0000-4000-8000-%012d', i)
                    redis.call('HSET', 'opamp:agent:{' .. uid .. '}',
                               'transport', 'http', 'healthy', '1',
                               'last_seen_ms', ARGV[2], 'gauge', 'h1U-g' .. (i % 20))
                    redis.call('ZADD', 'opamp:agents', ARGV[2], uid)
                    redis.call('HINCRBY', 'opamp:fleet:gauges', 'group:g' .. (i % 20), 1)
                end
                redis.call('HSET', 'opamp:fleet:gauges', 'agents', ARGV[1],
                           'transport:http', ARGV[1], 'health:healthy', ARGV[1],
                           'status:UNSET', ARGV[1], 'owed:none', ARGV[1])" \
            0 "$n" "$(date +%s%3N)" >/dev/null
        # Redis's own time per call of the scrape's script (the only
        # EVAL: no agent is connected, the sweep waits a minute)
        R config resetstat >/dev/null
        m=$(perl "$BENCH/metrics.pl" "$PORT" /metrics 2000)
        us=$(R info commandstats | tr -d '\r' \
             | sed -n 's/^cmdstat_eval:.*usec_per_call=\([0-9.]*\).*/\1/p')
        st=$(perl "$BENCH/metrics.pl" "$PORT" /stub 2000)
        row "scrape of opamp_metrics, $n agents in Redis (20 groups)" \
            "p50 $(echo "$m" | field p50_us) us, p99 $(echo "$m" | field p99_us) us, $(echo "$m" | field bytes) B; Redis $us us a scrape" \
            "stub_status p50 $(echo "$st" | field p50_us) us" "—"
    done
fi

if want rollout; then
    # its own nginx and Redis (t/lib/OpAMPTest.pm), with this run's module
    while IFS= read -r line; do
        case $line in
            start*|advance*)
                row "rollout step at ${BENCH_ROLLOUT:-10000} supervisor agents: ${line%%:*}" \
                    "${line#*: }" "—" "—" ;;
            done*)
                row "rollout timer step, ${BENCH_ROLLOUT:-10000} supervisor agents" \
                    "${line#*; }" "—" "—" ;;
        esac
    done < <(NGINX_MODULE="$MODULE" AGENTS="${BENCH_ROLLOUT:-10000}" \
             perl -I "$TOP/t/lib" "$BENCH/rollout-step.pl" 2>/dev/null)
fi

if want report; then
    # its own Redis (t/lib/OpAMPTest.pm), the tree's scripts
    for p in supervisor collector; do
        while IFS= read -r line; do
            case $line in
                "  "*)
                    line=${line#"  "}
                    us=$(echo "${line#*:}" | awk '{print $1}')
                    row "report.lua alone, $p agents (caps $SUP): ${line%%:*}" \
                        "$us µs of Redis a report" "—" "—" \
                        "<= 45 µs (issue 20)" "$(met "$us" le 45)" ;;
            esac
        done < <(PAYLOAD=$p AGENTS=1024 ROUNDS=5 \
                 perl -I "$TOP/t/lib" "$BENCH/report-cost.pl" 2>/dev/null)
    done
fi

if [ -f "$WORK/logs/error.log" ] \
   && grep -E '\[(alert|crit|emerg)\]' "$WORK/logs/error.log"; then
    echo "nginx logged alerts during the benchmark" >&2
fi

{
    echo "# Benchmark $(date -u +%Y-%m-%d)"
    echo
    echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r); runs: $RUNS (median)"
    echo
    echo "commit: $(git -C "$TOP" rev-parse --short HEAD 2>/dev/null); the machine is shared with other builds and tests: compare ratios from the same run"
    echo
    printf '%s\n' "${ROWS[@]}"
} > "$OUT"

echo
echo "written: $OUT"
