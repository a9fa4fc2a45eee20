#!/bin/sh
# Runs one libFuzzer target of t/fuzz.
#
#   t/fuzz/run.sh BUILD_DIR TARGET SECONDS
#
# SECONDS 0: every committed input of t/fuzz/corpus/TARGET once (the seeds
# and the inputs of crashes already fixed): a regression fails here.
# Otherwise: fuzz for SECONDS, starting from the committed corpus plus
# what earlier runs found (BUILD_DIR/corpus/TARGET, not committed); new
# crashes go to BUILD_DIR/artifacts/.  The log is BUILD_DIR/logs/TARGET.log;
# the last line printed sums it up.

set -u

dir=$1
target=$2
seconds=$3

bin=$dir/fuzz_$target
seeds=t/fuzz/corpus/$target
work=$dir/corpus/$target
log=$dir/logs/$target.log

mkdir -p "$work" "$dir/logs" "$dir/artifacts"

# Leaks are checked per input, and a slow input fails like a crash: over
# 5 s.  The targets that parse messages take inputs up to 1 MB, so that
# work growing faster than its input shows: on 1 MB inputs every path of
# theirs takes under 0.7 s here (ASan and UBSan), and the piece-by-piece
# join of a repeated field (issue 18) took 15 s.
case $target in
a2s|unpack|json) max_len=1048576 ;;
*)               max_len=65536 ;;
esac

opts="-timeout=5 -rss_limit_mb=2048 -max_len=$max_len -print_final_stats=1"
opts="$opts -artifact_prefix=$dir/artifacts/$target-"

if [ "$seconds" = 0 ]; then
    n=$(ls "$seeds" | wc -l)
    if ! "$bin" $opts -runs=0 "$seeds" >"$log" 2>&1; then
        tail -40 "$log"
        echo "fuzz $target: a committed input fails (log: $log)"
        exit 1
    fi
    echo "fuzz $target: $n committed inputs pass"
    exit 0
fi

if ! "$bin" $opts -max_total_time="$seconds" "$work" "$seeds" >"$log" 2>&1
then
    tail -60 "$log"
    echo "fuzz $target: FAILED after $seconds s, input in $dir/artifacts/" \
         "(add it to $seeds/ as crash-<what> once fixed); log: $log"
    exit 1
fi

# "#123 DONE cov: 456 ft: 789 corp: 12/3456b ..." and the final stats
done_line=$(grep -a 'DONE' "$log" | tail -1)
execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
rss=$(sed -n 's/^stat::peak_rss_mb: *//p' "$log")
cov=$(echo "$done_line" | sed -n 's/.*cov: \([0-9]*\).*/\1/p')
ft=$(echo "$done_line" | sed -n 's/.*ft: \([0-9]*\).*/\1/p')
corp=$(echo "$done_line" | sed -n 's/.*corp: \([^ ]*\).*/\1/p')

echo "fuzz $target: ${seconds} s, $execs execs, $rate exec/s, cov $cov," \
     "ft $ft, corpus $corp, peak RSS ${rss} MB"
