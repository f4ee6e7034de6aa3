# Helpers shared by benches/load.sh and benches/scale.sh (sourced, not run).

# seconds DURATION: whole seconds in a humantime duration like 500ms, 5s, 2m (rounded up); 600 if
# it is in another form.
seconds() {
    local v=$1
    if [[ $v =~ ^([0-9]+)ms$ ]]; then
        echo $(((BASH_REMATCH[1] + 999) / 1000))
    elif [[ $v =~ ^([0-9]+)s?$ ]]; then
        echo "${BASH_REMATCH[1]}"
    elif [[ $v =~ ^([0-9]+)m$ ]]; then
        echo $((BASH_REMATCH[1] * 60))
    else
        echo 600
    fi
}

CLK_TCK=$(getconf CLK_TCK)

# ticks PID: CPU ticks a process has used (all its threads, live and ended); empty if it is gone.
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || true; }

# children_cpu VAR FILE: sets VAR to the CPU seconds used by this shell's ended children (the
# second line of bash's `times`, which must run in this shell, not in a $(...) subshell), using
# FILE as scratch.
children_cpu() {
    times >"$2"
    printf -v "$1" '%s' "$(awk 'NR == 2 {
        n = split($0, t, " "); s = 0
        for (i = 1; i <= n; i++) { split(t[i], a, "m"); sub("s", "", a[2]); s += a[1] * 60 + a[2] }
        print s }' "$2")"
}

# bench_numbers FILE: "TPS p50 p99 p99.9 max errors" from a `percore bench` report.
bench_numbers() {
    awk '/^sent / { errors = $6 }
        /^throughput \(TPS\):/ { tps = $3 }
        /^latency \(us\):/ { p50 = $8; p99 = $12; p999 = $14; max = $18 }
        END { print tps + 0, p50 + 0, p99 + 0, p999 + 0, max + 0, errors + 0 }' "$1"
}
