#!/bin/bash
# percore bench over TCP, then over KCP, against one percore server (1 core) serving both, and
# the CPU each KCP reactor thread spends per call: utime+stime from /proc/PID/task/*/stat (in
# clock ticks of 10 ms), divided by the calls the run made.
#
#   cargo build --release && C=16 D=10s benches/kcp_vs_tcp.sh
#   SERVE_EXTRA="--set kcp.ack_delay=0s" BENCH_EXTRA="--kcp ack_delay=0s" benches/kcp_vs_tcp.sh
#
# Loopback only; the generator and the server share the machine's CPUs, so throughput says more
# about the machine than about either transport: the per-call CPU is the number to compare.
set -u
B=${B:-target/release/percore}
C=${C:-16}; D=${D:-10s}
OUT=$(mktemp -d)
$B serve --cores 1 --listen tcp@127.0.0.1:28972 --listen kcp@127.0.0.1:28973 ${SERVE_EXTRA:-} \
    >"$OUT/serve.log" 2>&1 &
PID=$!
trap 'kill -TERM $PID 2>/dev/null; wait $PID 2>/dev/null; rm -rf "$OUT"' EXIT
sleep 1
ticks() { # $1 pid, $2 thread-name prefix (comm is cut at 15 bytes): utime+stime ticks
    for t in /proc/"$1"/task/*; do
        case "$(cat "$t/comm" 2>/dev/null)" in "$2"*) awk '{print $14+$15}' "$t/stat" 2>/dev/null ;; esac
    done | awk '{s+=$1} END {print s+0}'
}
for net in tcp kcp; do
    port=28972; [ $net = kcp ] && port=28973
    r0=$(ticks $PID percore-kcp); c0=$(ticks $PID percore-core-)
    $B bench -s $net@127.0.0.1:$port -c "$C" -d "$D" --quiet ${BENCH_EXTRA:-} >"$OUT/$net.txt" 2>&1 &
    BP=$!; cl=0
    # The generator's own KCP reactor, sampled until it exits.
    while kill -0 $BP 2>/dev/null; do
        v=$(ticks $BP percore-kcp-cli); [ "$v" -gt 0 ] && cl=$v; sleep 0.2
    done
    r1=$(ticks $PID percore-kcp); c1=$(ticks $PID percore-core-)
    ok=$(awk '/^sent/ {print $4}' "$OUT/$net.txt")
    echo "== $net: $ok calls; server KCP reactor $((r1-r0)) ticks, server core $((c1-c0)) ticks, generator's KCP reactor >= $cl ticks"
    [ "${ok:-0}" -gt 0 ] && awk -v r=$((r1-r0)) -v c=$((c1-c0)) -v cl=$cl -v n="$ok" \
        'BEGIN {printf "   per call: server KCP reactor %.1f us, server core %.1f us, generator KCP reactor %.1f us\n", r*1e4/n, c*1e4/n, cl*1e4/n}'
    grep -E "throughput \(|latency" "$OUT/$net.txt"
done
