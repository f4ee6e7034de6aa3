#!/usr/bin/env bash
# User-space instructions per request on the server, counted by valgrind's callgrind (it counts
# instructions, not time, so the number is stable on a noisy machine).
#
#   bash benches/instructions.sh            # percore and the null server, Arith.Mul MsgPack, 1 in flight and 32 pipelined
#   REQUESTS=20000 RUNS=5 bash benches/instructions.sh   # each measured RUNS times (default 3), median printed
#   KEEP=/tmp/cg bash benches/instructions.sh   # keep the callgrind dumps (done.SERVER.BATCH) for callgrind_annotate
#   PAUSE=0.002 BATCHES=32 bash benches/instructions.sh   # the driver sleeps after each batch: runs repeat within an instruction or two
#   BATCHES=32 SERVERS=percore SERVER_ARGS="--set limits.idle_timeout=0s" bash benches/instructions.sh
#
# Method: start `percore serve --cores 1` under callgrind, warm up, zero the counters
# (callgrind_control -z), drive REQUESTS calls with benches/drive_arith.py, dump the counters
# (callgrind_control -d); instructions per request = the dump's total / REQUESTS, split into
# the tasks' share and the rest (executor and reactor). TOP=N also prints the N functions of
# highest self cost.
# Needs valgrind (apt-get install valgrind) and bc.
set -euo pipefail
cd "$(dirname "$0")/.."
REQUESTS=${REQUESTS:-10000}
RUNS=${RUNS:-3}
PORT=${PORT:-19111}
BIN=${BIN:-target/release/percore}
NULL=${NULL:-target/release/examples/null_server}
case ${PAUSE:-0} in
    '' | *[!0-9.]* | *.*.* | .) echo "instructions.sh: PAUSE=$PAUSE is not a number of seconds (e.g. 0.002)" >&2; exit 2 ;;
esac
[ -x "$BIN" ] || cargo build --release --locked
[ -x "$NULL" ] || cargo build --release --locked --example null_server
out=$(mktemp -d)
trap 'pkill -9 -f "valgrind.*--listen 127.0.0.1:$PORT" 2>/dev/null || true; [ -n "${KEEP:-}" ] && mkdir -p "$KEEP" && cp "$out"/done.* "$KEEP"/; rm -rf "$out"' EXIT

measure() { # $1 = batch size (calls pipelined per write), $2 = percore or null
    local batch=$1 server=${2:-percore}
    if [ "$server" = null ]; then
        valgrind --tool=callgrind --callgrind-out-file="$out/cg.$batch" "$NULL" "127.0.0.1:$PORT" 1 \
            >"$out/log.$batch" 2>&1 &
    else
        valgrind --tool=callgrind ${CG_OPTS:-} --callgrind-out-file="$out/cg.$batch" "$BIN" serve --cores 1 ${SERVER_ARGS:-} \
            --listen "127.0.0.1:$PORT" >"$out/log.$batch" 2>&1 &
    fi
    local pid=$!
    local reply=45
    [ "$server" = null ] && reply=47 # the null server echoes the 47-byte request
    python3 benches/drive_arith.py 127.0.0.1 "$PORT" 640 "$batch" "$reply"
    callgrind_control -z "$pid" >/dev/null
    python3 benches/drive_arith.py 127.0.0.1 "$PORT" "$REQUESTS" "$batch" "$reply" "${PAUSE:-0}"
    callgrind_control -d "$pid" >/dev/null
    sleep 1
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    local dump
    dump=$(ls "$out"/cg."$batch".* | head -n 1)
    mv "$dump" "$out/done.$server.$batch"
    dump="$out/done.$server.$batch"
    local total tasks enters
    total=$(grep '^summary:' "$dump" | awk '{print $2}')
    # The tasks' share: everything the tasks ran (the connection's own work, including the
    # syscalls' user side), glommio's RawTask::run inclusive. The rest is the executor's loop
    # and its reactor (io_uring submissions and completions, timers), whose share depends on how
    # often it runs, which depends on timing (a request that arrives while the reactor spins
    # saves a sleep), so it varies from run to run at one call in flight; the tasks' share does
    # not. (Function names are not used for the rest: LTO inlines the reactor differently in
    # every binary.) io_uring_enter calls per request: how often the loop went to the kernel.
    inclusive() { callgrind_annotate --inclusive=yes --threshold=100 "$dump" 2>/dev/null \
        | grep -E "$1 \[" | head -n 1 | awk '{gsub(",", "", $1); print $1}' || true; }
    tasks=$(inclusive 'glommio::task::raw::RawTask<F,R,S>::run')
    enters=$(python3 - "$dump" <<'PY'
import re, sys
names, callee, n = {}, None, 0
for line in open(sys.argv[1]):
    m = re.match(r"^cfn=\((\d+)\)(?: (.*))?$", line.rstrip("\n"))
    if m:
        if m.group(2):
            names[m.group(1)] = m.group(2)
        callee = names.get(m.group(1), "")
        continue
    m = re.match(r"^fn=\((\d+)\) (.*)$", line.rstrip("\n"))
    if m:
        names[m.group(1)] = m.group(2)
    if line.startswith("calls=") and callee in ("__sys_io_uring_enter", "__sys_io_uring_enter2"):
        n += int(line[6:].split()[0])
print(n)
PY
)
    printf '%-30s %8.0f per request: %6.0f in tasks, %6.0f outside them (%.2f io_uring_enter calls per request)\n' \
        "$server Arith.Mul msgpack x$batch" "$(echo "$total / $REQUESTS" | bc -l)" \
        "$(echo "${tasks:-0} / $REQUESTS" | bc -l)" "$(echo "($total - ${tasks:-0}) / $REQUESTS" | bc -l)" \
        "$(echo "$enters / $REQUESTS" | bc -l)"
    if [ -n "${TOP:-}" ]; then
        callgrind_annotate --threshold=100 "$dump" 2>/dev/null | grep -E '^ *[0-9,]+ \(' | grep -v 'PROGRAM TOTALS' \
            | grep -vE 'clone.S|start_thread|__rust_begin_short_backtrace|thread_start|call_once\{\{vtable' | head -n "$TOP" \
            | sed -E 's#/root/.cargo/registry/src/[^/]+/##; s#/rustc/[0-9a-f]+/library/##' | cut -c1-150 || true
    fi
}

echo "callgrind, user-space instructions on the server, $REQUESTS requests per run, $RUNS runs each"
# The servers take turns, run by run: the share outside the tasks moves with the machine's state
# (how the driver's writes fall against the reactor's sleeps), and turns let both servers see the
# same drift rather than one of them all of it.
for batch in ${BATCHES:-1 32}; do
    for _ in $(seq "$RUNS"); do
        for server in ${SERVERS:-percore null}; do
            measure "$batch" "$server" | tee -a "$out/results"
        done
    done
done
# The median of the runs: the share outside the tasks depends on how the reactor's loops fall
# between batches (timing), so one run can be off by 10-20% there; the tasks' share is stable.
echo "median of $RUNS runs:"
python3 - "$out/results" <<'PY'
import re, statistics, sys
runs = {}
for line in open(sys.argv[1]):
    m = re.match(r"(\S+) Arith.Mul msgpack x(\d+) +(\d+) per request: +(\d+) in tasks", line)
    if m:
        runs.setdefault((m.group(1), int(m.group(2))), []).append((int(m.group(3)), int(m.group(4))))
median = {k: (statistics.median(t for t, _ in v), statistics.median(t for _, t in v)) for k, v in runs.items()}
for (server, batch), (total, tasks) in median.items():
    ratio = ""
    if server != "null" and ("null", batch) in median:
        ratio = f"   {total / median[('null', batch)][0]:.2f}x the null server's total"
    print(f"{server:8} x{batch:<3} {total:8.0f} per request, {tasks:6.0f} in tasks{ratio}")
PY
