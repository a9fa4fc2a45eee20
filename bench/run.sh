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
        nchan_locs="location = /sub { nchan_subscriber websocket; nchan_channel_id bench;
                          nchan_redis_pass nchan_redis; }
        location = /pub { nchan_publisher; nchan_channel_id bench;
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
row() { ROWS+=("$(printf '| %s | %s | %s | %s |' "$1" "$2" "$3" "$4")"); echo "${ROWS[-1]}"; }

echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r)"
echo "nginx $("$NGINX" -v 2>&1 | sed 's/.*\///'), redis $(redis-server --version | awk '{print $3}' | sed 's/v=//'), runs: $RUNS (median)"
echo
row "scenario" "ngx_http_opamp_module" "anchor" "ratio"
row "---" "---" "---" "---"

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
            out=$(loadgen_many "$n" --mode hold --raw --path /sub --duration $((n / 500 + 20)) &
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
            opamp: '' '' '' 0 '' '' '' '' '' '' 2>/dev/null \
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
    # has one request out); 500 keep every process busy, as a fleet does
    start_nginx 2
    for agents in 50 500; do
        hp=(); h204=()
        for run in $(seq "$RUNS"); do
            R flushall >/dev/null
            hp+=("$("$BENCH/loadgen" --port "$PORT" --mode http --agents "$agents" --duration "$SECONDS_RUN" | field rate)")
            h204+=("$("$BENCH/loadgen" --port "$PORT" --mode http --path /204 --agents "$agents" --duration "$SECONDS_RUN" | field rate)")
        done
        a=$(printf '%s\n' "${hp[@]}" | median); b=$(printf '%s\n' "${h204[@]}" | median)
        row "HTTP polling: heartbeats per second ($agents keep-alive agents)" "$a /s" \
            "nginx return 204: $b /s" \
            "$(awk -v a="$a" -v b="$b" 'BEGIN {printf "%.2fx", (b>0 ? a/b : 0)}')"
    done
fi

# --- config fan-out -----------------------------------------------------------

# two kinds of change: new files for the group the agents already have a
# config from (a rollout: each agent keeps its group, only the hash moves),
# and a new group (every agent is matched against every group again)
fanout_run() {
    local n=$1 trigger=$2
    loadgen_many "$n" --mode fanout --duration 60 --trigger "$trigger"
}

if want fanout; then

    for n in $FANOUT; do
        workers=$(( (n + PER_PROC - 1) / PER_PROC )); [ "$workers" -lt 2 ] && workers=2
        start_nginx "$workers"
        p50=(); p99=(); mx=(); got=(); gp50=(); gp99=(); gmx=(); ggot=()
        np99=(); nmx=(); np50=()
        for run in $(seq "$RUNS"); do
            # new files for the agents' group
            R flushall >/dev/null
            curl -s -o /dev/null -X PUT "http://127.0.0.1:$PORT/admin/configs/groups/bench" \
                -d "{\"selector\":\"service.name=bench\",\"files\":{\"c.yaml\":{\"body\":\"before $run\"}}}"
            body="{\"selector\":\"service.name=bench\",\"files\":{\"c.yaml\":{\"body\":\"run $run $RANDOM\"}}}"
            out=$(fanout_run "$n" "curl -s -o /dev/null -X PUT http://127.0.0.1:$PORT/admin/configs/groups/bench -d '$body'")
            got+=("$(echo "$out" | sum_field received)")
            p50+=("$(echo "$out" | max_field p50_ms)")
            p99+=("$(echo "$out" | max_field p99_ms)")
            mx+=("$(echo "$out" | max_field max_ms)")

            # a new group
            R flushall >/dev/null
            out=$(fanout_run "$n" "curl -s -o /dev/null -X PUT http://127.0.0.1:$PORT/admin/configs/groups/bench -d '$body'")
            ggot+=("$(echo "$out" | sum_field received)")
            gp50+=("$(echo "$out" | max_field p50_ms)")
            gp99+=("$(echo "$out" | max_field p99_ms)")
            gmx+=("$(echo "$out" | max_field max_ms)")

            out=$(loadgen_many "$n" --mode fanout --raw --path /sub --duration 60 \
                  --trigger "curl -s -o /dev/null -X POST http://127.0.0.1:$PORT/pub -d 'run $run'")
            np50+=("$(echo "$out" | max_field p50_ms)")
            np99+=("$(echo "$out" | max_field p99_ms)")
            nmx+=("$(echo "$out" | max_field max_ms)")
        done
        b=$(printf '%s\n' "${np99[@]}" | median)
        nchan="Nchan broadcast p50 / p99 / max: $(printf '%s\n' "${np50[@]}" | median) / $b / $(printf '%s\n' "${nmx[@]}" | median) ms"
        a=$(printf '%s\n' "${p99[@]}" | median)
        row "config change to $n agents (new files for their group): received / p50 / p99 / max" \
            "$(printf '%s\n' "${got[@]}" | median) / $(printf '%s\n' "${p50[@]}" | median) / $a / $(printf '%s\n' "${mx[@]}" | median) ms" \
            "$nchan" \
            "$(awk -v a="$a" -v b="$b" 'BEGIN {printf "%.2fx", (b>0 ? a/b : 0)}')"
        a=$(printf '%s\n' "${gp99[@]}" | median)
        row "new group matching $n agents: received / p50 / p99 / max" \
            "$(printf '%s\n' "${ggot[@]}" | median) / $(printf '%s\n' "${gp50[@]}" | median) / $a / $(printf '%s\n' "${gmx[@]}" | median) ms" \
            "the same broadcast" \
            "$(awk -v a="$a" -v b="$b" 'BEGIN {printf "%.2fx", (b>0 ? a/b : 0)}')"
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

if grep -E '\[(alert|crit|emerg)\]' "$WORK/logs/error.log"; then
    echo "nginx logged alerts during the benchmark" >&2
fi

{
    echo "# Benchmark $(date -u +%Y-%m-%d)"
    echo
    echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r); runs: $RUNS (median)"
    echo
    printf '%s\n' "${ROWS[@]}"
} > "$OUT"

echo
echo "written: $OUT"
