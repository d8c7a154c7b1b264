#!/usr/bin/env bash
# message-budget.sh - what one message costs each side of the RDMA LND, counted (not timed) over rxe: thread
# wake-ups (context switches), system calls, heap allocations (malloc calls) and memory registrations
# (ibv_reg_mr_iova2 calls), per operation, for the client and for the server.
#
# Usage: Benchmarks/message-budget.sh [--json]
#
# Builds lnetctl (release), then in one scripts/softroce-vm.sh run: `lnetctl serve` on 192.0.2.1 and, from
# 192.0.2.2, `lnetctl selftest` reads and writes of 4 KiB and 64 KiB (BUDGET_COUNT operations each, 8 in flight,
# pull mode) and `lnetctl ping` (BUDGET_COUNT pings, one at a time), each process under `perf stat` with
# uprobes on malloc and ibv_reg_mr_iova2. Counts include each process's set-up and teardown; with a few thousand
# operations those are a small share, and they are the same before and after a change.
#
# Env: BUDGET_COUNT (default 2000), BUDGET_LNETCTL (a prebuilt lnetctl to measure instead), LND_* for both nodes.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

if [[ "${1:-}" == "--inside" ]]; then
    bin=$2
    out=$3
    count=${BUDGET_COUNT:-2000}
    mkdir -p "$out"
    log() { printf 'budget: %s\n' "$*" >&2; }
    probe() { # LIBRARY SYMBOL NAME: a uprobe at the symbol's address (not its PLT entry)
        local address
        address=$(nm -D --defined-only "$1" | awk -v s="$2" '{ sub(/@.*/, "", $3) } $3 == s && !found { print $1; found = 1 }')
        [[ -n $address ]] || { log "no $2 in $1"; exit 1; }
        perf probe -q -x "$1" -a "$3=0x$address" >/dev/null
    }
    probe /lib/x86_64-linux-gnu/libc.so.6 malloc budget_malloc
    probe /lib/x86_64-linux-gnu/libibverbs.so.1 ibv_reg_mr_iova2 budget_regmr
    events=context-switches,raw_syscalls:sys_enter,probe_libc:budget_malloc,probe_libibverbs:budget_regmr

    run_case() { # NAME CLIENT-ARGS...
        local name=$1 ready="$out/$1.ready" spid ppid
        shift
        rm -f "$ready"
        "$bin" serve --nid 192.0.2.1@o2ib --ready-file "$ready" >"$out/$name.serve.log" 2>&1 &
        spid=$!
        for _ in $(seq 1 600); do [[ -f $ready ]] && break; sleep 0.1; done
        [[ -f $ready ]] || { log "serve did not come up"; exit 1; }
        perf stat -x, -e "$events" -o "$out/$name.server.csv" -p "$spid" &
        ppid=$!
        sleep 0.5
        log "$name: lnetctl $*"
        perf stat -x, -e "$events" -o "$out/$name.client.csv" -- "$bin" "$@" --json >"$out/$name.client.json" 2>"$out/$name.client.log" ||
            log "$name failed: $(tail -n 2 "$out/$name.client.log" | tr '\n' ' ')"
        kill -INT "$ppid"
        wait "$ppid" || true
        kill -TERM "$spid"
        wait "$spid" || log "serve exited with status $?"
    }
    for size in 4096 65536; do
        for op in read write; do
            run_case "$op-$size" selftest --nid 192.0.2.2@o2ib --to 192.0.2.1@o2ib --op $op --size $size --concurrency 8 \
                --count "$count" --mode pull --verify
        done
    done
    run_case ping ping --nid 192.0.2.2@o2ib 192.0.2.1@o2ib --count "$count"
    perf probe -q -d 'probe_libc:budget_*' -d 'probe_libibverbs:budget_*' || true
    exit 0
fi

json=0
case "${1:-}" in
    --json) json=1 ;;
    "") ;;
    -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    *) echo "usage: Benchmarks/message-budget.sh [--json]" >&2; exit 2 ;;
esac
scripts/install-deps.sh --vm --bench >&2
if [[ -n ${BUDGET_LNETCTL:-} ]]; then
    bin=$(realpath "$BUDGET_LNETCTL")
else
    swift build -c release --product lnetctl >&2
    bin="$(swift build -c release --show-bin-path)/lnetctl"
fi
out="$repo/results/budget/$(date +%Y%m%d-%H%M%S)"
mkdir -p "$out"
scripts/softroce-vm.sh -- "$repo/Benchmarks/message-budget.sh" --inside "$bin" "$out" >&2
python3 - "$out" "$json" <<'PY'
import csv, json, os, sys
out, as_json = sys.argv[1], sys.argv[2] == "1"
names = {"context-switches": "wakeups", "raw_syscalls:sys_enter": "syscalls", "probe_libc:budget_malloc": "mallocs",
         "probe_libibverbs:budget_regmr": "registrations"}
rows = []
for case in ["read-4096", "write-4096", "read-65536", "write-65536", "ping"]:
    try:
        result = json.load(open(os.path.join(out, f"{case}.client.json")))
    except (OSError, ValueError):
        continue
    ops = result.get("succeeded", result.get("received", 0))
    row = {"case": case, "operations": ops}
    for side in ("client", "server"):
        for line in csv.reader(open(os.path.join(out, f"{case}.{side}.csv"))):
            if len(line) > 2 and line[2] in names and line[0].strip().isdigit():
                row[f"{side}_{names[line[2]]}"] = round(int(line[0]) / max(1, ops), 2)
    rows.append(row)
if as_json:
    print(json.dumps({"rows": rows, "raw": out}, sort_keys=True))
else:
    columns = ["wakeups", "syscalls", "mallocs", "registrations"]
    print(f"{'per operation':<12} {'ops':>6} " + " ".join(f"{'client ' + c:>20}" for c in columns) + " "
          + " ".join(f"{'server ' + c:>20}" for c in columns))
    for row in rows:
        print(f"{row['case']:<12} {row['operations']:>6} " + " ".join(f"{row.get('client_' + c, '-'):>20}" for c in columns) + " "
              + " ".join(f"{row.get('server_' + c, '-'):>20}" for c in columns))
    print(f"raw: {out}")
PY
