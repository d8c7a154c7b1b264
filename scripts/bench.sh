#!/usr/bin/env bash
# bench.sh - the LND beside perftest on one rxe device, in one SoftRoCE VM run.
#
# Usage: scripts/bench.sh [--json]
#
# Builds lnetctl (release), then in ONE scripts/softroce-vm.sh run (natively when an RDMA device exists) on rxe0
# with 192.0.2.1 (server) and 192.0.2.2 (client):
#   - perftest: ib_read_bw and ib_write_bw at 4 KiB, 64 KiB and 1 MiB, ib_send_lat at 8 B (server in the background,
#     waited for by PID; -x is the GID index of each address, read from /sys/class/infiniband/rxe0/ports/1/gids);
#   - lnetctl selftest: read (GET) and write (PUT) at the same sizes, in pull and in push mode (the server is
#     restarted with LND_GET_MODE/LND_PUT_MODE for each mode: a GET's mode is the server's, a PUT's the client's,
#     which `selftest --mode` sets); and lnetctl ping.
# Repeated BENCH_REPEAT times (perftest and the LND back to back in each repetition); figures are medians and each
# ratio is the median of the per-repetition ratios. Prints a table with each LND figure beside its perftest
# counterpart and their ratio (bandwidth: LND / perftest; latency: perftest / LND; higher is better):
#   GET pull vs ib_read_bw, GET push vs ib_write_bw, PUT pull vs ib_read_bw, PUT push vs ib_write_bw,
#   ping RTT/2 vs ib_send_lat t_typical.
# Also CPU seconds per GiB moved (client + server lnetctl processes) and their peak RSS.
# --json prints one JSON object: {"rows": [{name, lnd, perftest, unit, ratio, target, ...}], ...}.
# Raw outputs stay in results/bench/<timestamp>/.
#
# Environment: BENCH_REPEAT (default 3), BENCH_SECONDS per LND run (default 3), BENCH_CONCURRENCY (default 8),
#              BENCH_PING_COUNT (default 300), SOFTROCE_VM_* (see softroce-vm.sh).
# Bandwidth is in MB/s with MB = 2^20 bytes, as perftest reports it.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

SIZES=(4096 65536 1048576)
SERVER_ADDR=192.0.2.1
CLIENT_ADDR=192.0.2.2

# ---------------------------------------------------------------------------------------------------------------
# Inside the VM (or natively next to rxe0): run everything, write raw results into $out.
# ---------------------------------------------------------------------------------------------------------------
if [[ "${1:-}" == "--inside" ]]; then
    bin=$2
    out=$3
    repeat=${BENCH_REPEAT:-3}
    seconds=${BENCH_SECONDS:-3}
    concurrency=${BENCH_CONCURRENCY:-8}
    ping_count=${BENCH_PING_COUNT:-300}
    dev=rxe0
    mkdir -p "$out"
    log() { printf 'bench: %s\n' "$*" >&2; }

    # The GID index carrying an IPv4 address (RoCE v2 when the type is shown).
    gid_index() {
        local ip=$1 a b c d want f idx type
        IFS=. read -r a b c d <<<"$ip"
        want=$(printf '0000:0000:0000:0000:0000:ffff:%02x%02x:%02x%02x' "$a" "$b" "$c" "$d")
        for f in /sys/class/infiniband/$dev/ports/1/gids/*; do
            idx=${f##*/}
            [[ $(cat "$f" 2>/dev/null) == "$want" ]] || continue
            type=$(cat "/sys/class/infiniband/$dev/ports/1/gid_attrs/types/$idx" 2>/dev/null || echo "RoCE v2")
            [[ $type == "RoCE v2" ]] && { echo "$idx"; return 0; }
        done
        return 1
    }
    gid_s=$(gid_index $SERVER_ADDR) || { log "no GID for $SERVER_ADDR on $dev"; exit 1; }
    gid_c=$(gid_index $CLIENT_ADDR) || { log "no GID for $CLIENT_ADDR on $dev"; exit 1; }
    log "$dev: $SERVER_ADDR is GID $gid_s, $CLIENT_ADDR is GID $gid_c"
    echo "{\"server_gid\": $gid_s, \"client_gid\": $gid_c}" >"$out/gids.json"

    # perftest iterations: a few seconds each at the 20-100 MB/s rxe manages under emulation.
    iterations() {
        case $1 in
            4096) echo 8000 ;;
            65536) echo 1500 ;;
            *) echo 100 ;;
        esac
    }

    perf_port=18515
    # perf_pair NAME TOOL ARGS...: server in the background, client against it, wait for the server by PID.
    perf_pair() {
        local name=$1 tool=$2
        shift 2
        perf_port=$((perf_port + 1))
        timeout 120 "$tool" -d $dev -x "$gid_s" -F -p $perf_port "$@" >"$out/$name.server.txt" 2>&1 &
        local spid=$! try ok=0
        for try in $(seq 1 40); do
            sleep 0.25
            if timeout 120 "$tool" -d $dev -x "$gid_c" -F -p $perf_port "$@" $SERVER_ADDR >"$out/$name.client.txt" 2>&1; then
                ok=1
                break
            fi
            grep -q -i "couldn't connect\|unable to connect\|connection refused" "$out/$name.client.txt" || break
            kill -0 $spid 2>/dev/null || break
        done
        if ((ok)); then
            wait $spid || true
        else
            log "$name failed: $(tail -n 3 "$out/$name.client.txt" | tr '\n' ' ')"
            kill $spid 2>/dev/null || true
            wait $spid 2>/dev/null || true
        fi
    }

    server_pid=
    stop_server() {
        if [[ -n $server_pid ]]; then
            kill -TERM "$server_pid" 2>/dev/null || true
            wait "$server_pid" || log "lnetctl serve exited with status $?"
            server_pid=
        fi
    }
    trap stop_server EXIT
    start_server() { # MODE REP
        local mode=$1 ready="$out/serve-$1-$2.ready" waited
        rm -f "$ready"
        LND_GET_MODE=$mode LND_PUT_MODE=$mode "$bin" serve --nid $SERVER_ADDR@o2ib --ready-file "$ready" --json \
            >"$out/serve-$mode-$2.json" 2>"$out/serve-$mode-$2.log" &
        server_pid=$!
        for waited in $(seq 1 600); do
            [[ -f $ready ]] && return 0
            kill -0 "$server_pid" 2>/dev/null || break
            sleep 0.1
        done
        log "lnetctl serve ($mode) did not come up: $(tail -n 3 "$out/serve-$mode-$2.log" | tr '\n' ' ')"
        exit 1
    }

    # Each repetition measures perftest and the LND back to back, so both see the same machine load.
    for rep in $(seq 1 "$repeat"); do
        for size in "${SIZES[@]}"; do
            n=$(iterations "$size")
            log "rep $rep: ib_read_bw / ib_write_bw $size B x $n"
            perf_pair "ib_read_bw-$size-$rep" ib_read_bw -s "$size" -n "$n"
            perf_pair "ib_write_bw-$size-$rep" ib_write_bw -s "$size" -n "$n"
        done
        log "rep $rep: ib_send_lat 8 B (busy polling, and -e: completion events)"
        perf_pair "ib_send_lat-8-$rep" ib_send_lat -s 8 -n 5000
        perf_pair "ib_send_lat_events-8-$rep" ib_send_lat -s 8 -n 1000 -e

        for mode in pull push; do
            start_server $mode "$rep"
            for size in "${SIZES[@]}"; do
                for op in read write; do
                    log "rep $rep: lnetctl selftest $op $mode $size B x$concurrency for ${seconds}s"
                    "$bin" selftest --nid $CLIENT_ADDR@o2ib --to $SERVER_ADDR@o2ib --op $op --size "$size" \
                        --concurrency "$concurrency" --duration "${seconds}s" --mode $mode --json \
                        >"$out/lnd-$op-$mode-$size-$rep.json" 2>"$out/lnd-$op-$mode-$size-$rep.log" ||
                        log "selftest $op $mode $size failed: $(tail -n 2 "$out/lnd-$op-$mode-$size-$rep.log" | tr '\n' ' ')"
                done
            done
            if [[ $mode == pull ]]; then
                log "rep $rep: lnetctl ping x$ping_count"
                "$bin" ping --nid $CLIENT_ADDR@o2ib $SERVER_ADDR@o2ib --count "$ping_count" --json \
                    >"$out/lnd-ping-$rep.json" 2>"$out/lnd-ping-$rep.log" ||
                    log "ping failed: $(tail -n 2 "$out/lnd-ping-$rep.log" | tr '\n' ' ')"
            fi
            stop_server
        done
    done
    exit 0
fi

# ---------------------------------------------------------------------------------------------------------------
# Outside: build, run the VM once, report.
# ---------------------------------------------------------------------------------------------------------------
json=0
case "${1:-}" in
    --json) json=1 ;;
    "") ;;
    -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    *) echo "usage: scripts/bench.sh [--json]" >&2; exit 2 ;;
esac

started=$(date +%s)
scripts/install-deps.sh --vm >&2
echo "bench: building lnetctl (release)" >&2
swift build -c release --product lnetctl >&2
bin="$(swift build -c release --show-bin-path)/lnetctl"
out="$repo/results/bench/$(date +%Y%m%d-%H%M%S)"
mkdir -p "$out"
echo "bench: raw results in $out" >&2
vm_status=0
scripts/softroce-vm.sh -- "$repo/scripts/bench.sh" --inside "$bin" "$out" >&2 || vm_status=$?
echo "bench: VM run done (status $vm_status) after $(($(date +%s) - started)) s" >&2

python3 - "$out" "$json" "$vm_status" <<'PY'
import glob, json, os, re, statistics, sys

out, as_json, vm_status = sys.argv[1], sys.argv[2] == "1", int(sys.argv[3])
sizes = [4096, 65536, 1048576]

def label(size):
    return f"{size >> 20}MiB" if size >= 1 << 20 else f"{size >> 10}KiB" if size >= 1024 else f"{size}B"

def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None

def perftest(tool, size, rep):
    """BW average [MB/sec] (bw tools) or t_typical [usec] (lat tools) of one run."""
    path = os.path.join(out, f"{tool}-{size}-{rep}.client.txt")
    if not os.path.exists(path):
        return None
    for line in open(path, errors="replace"):
        fields = line.split()
        if len(fields) >= 5 and fields[0] == str(size) and fields[1].isdigit():
            try:
                return float(fields[3] if tool.endswith("_bw") else fields[4])
            except ValueError:
                return None
    return None

def load(path):
    try:
        return json.load(open(path))
    except (ValueError, OSError):
        return None

reps = sorted({int(m.group(1)) for f in os.listdir(out) for m in [re.search(r"-(\d+)\.client\.txt$", f)] if m})
rows, rss, failures = [], [], []
targets = {1048576: 0.90, 65536: 0.75}
pairs = [("get", "read", "pull", "ib_read_bw"), ("get", "read", "push", "ib_write_bw"),
         ("put", "write", "pull", "ib_read_bw"), ("put", "write", "push", "ib_write_bw")]
for size in sizes:
    for name, op, mode, tool in pairs:
        lnd_values, base_values, ratios, cpu, p50 = [], [], [], [], []
        for rep in reps:
            run = load(os.path.join(out, f"lnd-{op}-{mode}-{size}-{rep}.json"))
            base = perftest(tool, size, rep)
            base_values.append(base)
            if run is None:
                failures.append(f"{name}-{mode}-{label(size)} rep {rep}: no result")
                continue
            rss += [run.get("max_rss_kib") or 0, (run.get("server") or {}).get("max_rss_kib") or 0]
            if "error" in run or run.get("errors"):
                failures.append(f"{name}-{mode}-{label(size)} rep {rep}: {run.get('error') or run.get('first_error')}")
                continue
            lnd_values.append(run["mb_per_s"])
            p50.append(run["latency_us"]["p50"])
            if base:
                ratios.append(run["mb_per_s"] / base)
            if run.get("bytes"):
                cpu.append(((run.get("cpu_s") or 0) + ((run.get("server") or {}).get("cpu_s") or 0)) / (run["bytes"] / 2**30))
        rows.append({
            "name": f"{name}-{mode}-{label(size)}", "lnd": median(lnd_values), "perftest": median(base_values),
            "perftest_tool": tool, "unit": "MB/s", "ratio": median(ratios), "target": targets.get(size),
            "ratios": [round(r, 3) for r in ratios], "cpu_s_per_gib": median(cpu), "latency_p50_us": median(p50),
        })

def ping_row(tool, name, target):
    halves, bases, ratios = [], [], []
    for rep in reps:
        run = load(os.path.join(out, f"lnd-ping-{rep}.json"))
        base = perftest(tool, 8, rep)
        bases.append(base)
        if run is None:
            continue
        if run.get("errors"):
            failures.append(f"ping rep {rep}: {run.get('errors')} errors ({run.get('first_error')})")
        if run.get("received"):
            half = run["rtt_us"]["p50"] / 2
            halves.append(half)
            if base:
                ratios.append(base / half)
    return {"name": name, "lnd": median(halves), "perftest": median(bases), "perftest_tool": tool, "unit": "us",
            "ratio": median(ratios), "target": target, "ratios": [round(r, 4) for r in ratios]}

rows.append(ping_row("ib_send_lat", "ping-rtt/2-8B", 0.5))
rows.append(ping_row("ib_send_lat_events", "ping-rtt/2-8B-vs-events", None))

for row in rows:
    for key in ("lnd", "perftest", "ratio", "cpu_s_per_gib", "latency_p50_us"):
        if isinstance(row.get(key), float):
            row[key] = round(row[key], 3 if key in ("ratio", "cpu_s_per_gib") else 2)

cpu_all = [r["cpu_s_per_gib"] for r in rows if r.get("cpu_s_per_gib") is not None]
summary = {
    "rows": rows,
    "repeats": len(reps),
    "cpu_s_per_gib_median": round(statistics.median(cpu_all), 3) if cpu_all else None,
    "peak_rss_kib": max(rss) if rss else None,
    "failures": failures,
    "vm_status": vm_status,
    "raw": out,
    "notes": "MB/s = 2^20 bytes/s (perftest's unit). Each ratio is the median over repetitions of the ratio within a repetition "
             "(perftest and the LND run back to back). Bandwidth ratio = LND / perftest; latency ratio = ib_send_lat t_typical / "
             "(ping p50 RTT / 2). Targets: 1 MiB >= 0.90, 64 KiB >= 0.75, ping/2 <= 2 x ib_send_lat (ratio >= 0.5). The "
             "ib_send_lat_events row compares with ib_send_lat -e (completion events instead of busy polling), for information. "
             "cpu = client + server lnetctl CPU seconds per GiB moved.",
}
if as_json:
    print(json.dumps(summary, sort_keys=True))
else:
    def cell(v, fmt="{:.1f}"):
        return "-" if v is None else fmt.format(v)
    print(f"{'name':<26} {'LND':>9} {'perftest':>9} {'unit':>5}  {'vs':<19} {'ratio':>6} {'target':>6} {'cpu s/GiB':>9}")
    for r in rows:
        mark = "" if r["ratio"] is None or r["target"] is None else ("  ok" if r["ratio"] >= r["target"] else "  MISS")
        print(f"{r['name']:<26} {cell(r['lnd']):>9} {cell(r['perftest']):>9} {r['unit']:>5}  {r['perftest_tool']:<19} "
              f"{cell(r['ratio'], '{:.2f}'):>6} {cell(r['target'], '{:.2f}'):>6} {cell(r.get('cpu_s_per_gib'), '{:.2f}'):>9}{mark}")
    print(f"repetitions: {len(reps)}; peak RSS of the lnetctl processes: "
          f"{cell(summary['peak_rss_kib'] and summary['peak_rss_kib'] / 1024)} MiB; "
          f"median CPU (client + server) per GiB moved: {cell(summary['cpu_s_per_gib_median'], '{:.2f}')} s")
    for f in failures:
        print(f"failure: {f}")
    print(f"raw results: {out}")
missing = [r["name"] for r in rows if r["target"] is not None and (r["lnd"] is None or r["perftest"] is None)]
sys.exit(1 if vm_status or failures or missing else 0)
PY
