#!/usr/bin/env bash
# soak.sh - a long mixed-load run between two SoftRoCE hosts (not part of CI).
#
# Usage:
#   scripts/soak.sh [SECONDS]        (default 600)
#
# Boots the two VMs of scripts/softroce-2host.sh. Each host runs one `lnetctl serve` (A on 192.0.2.1, B on
# 192.0.2.2) and six self-test clients against the other host's server, each client on an address of its own
# (A: 192.0.2.11-16, B: 192.0.2.21-26, added to eth0; each process is its own LNet node): reads and writes of
# 1 B-64 KiB (224 in flight each), 64 KiB-1 MiB (28 each) and 1-16 MiB (4 each), sizes drawn log-uniformly per
# operation, every byte verified - 512 operations in flight in each direction. Every process's resident memory
# (VmRSS) is sampled 30 s after the start and 10 s before the end.
# Prints operations completed, bytes verified, errors and the memory figures; writes results/soak.json and keeps
# every process's output under results/soak/ (with both hosts' rxe counters). Exit status 0 when nothing was lost,
# every successful operation was verified and every process's messages were finalized exactly once; operations
# that failed with an error are reported (with their error kinds and the LND's timeouts), not hidden.
#
# Uses the release build of lnetctl (built here: swift build -c release --product lnetctl).
# Environment: SOAK_MEM (MiB per VM, default 3072), LND_* tunables (passed to every process; under emulation
# a 16 MiB operation can take minutes when the link is saturated: LND_TIMEOUT=300 avoids timing those out).
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ ${1:-} == --host ]]; then
    # Inside a VM: $2 = duration in seconds, $3 = the output folder (in the repository). SOFTROCE_2HOST_* tell
    # who we are; the shared folder (no caching) carries the ready/done marks between the hosts.
    duration=$2
    O=$3
    S=$SOFTROCE_2HOST_SHARED
    H=$SOFTROCE_2HOST_HOST
    me=$SOFTROCE_2HOST_ADDR peer=$SOFTROCE_2HOST_PEER
    bin=$PWD/.build/release/lnetctl
    base=11
    [[ $H == B ]] && base=21
    classes=("read 1-64KiB 224" "write 1-64KiB 224" "read 64KiB-1MiB 28" "write 64KiB-1MiB 28"
             "read 1MiB-16MiB 4" "write 1MiB-16MiB 4")
    # An operation the LND has not finished after LND_TIMEOUT fails there; the self-test waits a minute longer, so
    # that a failure is the LND's error, not the self-test giving up.
    optimeout=$(( ${LND_TIMEOUT:-50} + 60 ))
    for i in 0 1 2 3 4 5; do ip addr add "192.0.2.$((base + i))/24" dev eth0; done
    sleep 1   # the new addresses' RoCE GIDs
    "$bin" serve --nid "$me@o2ib" --json --ready-file "$S/$H.serve.ready" >"$O/$H.serve.json" 2>"$O/$H.serve.err" &
    serve=$!
    until [[ -e $S/A.serve.ready && -e $S/B.serve.ready ]]; do sleep 0.2; done
    pids=()
    for i in 0 1 2 3 4 5; do
        read -r op size conc <<<"${classes[$i]}"
        "$bin" selftest --nid "192.0.2.$((base + i))@o2ib" --to "$peer@o2ib" --op "$op" --size "$size" \
            --concurrency "$conc" --duration "${duration}s" --verify --max-errors 0 --timeout "${optimeout}s" --json \
            >"$O/$H.client$i.json" 2>"$O/$H.client$i.err" &
        pids+=($!)
    done
    rss() {   # rss LABEL: VmRSS (KiB) of the server and every client
        local p line
        for p in "$serve" "${pids[@]}"; do
            line=$(grep VmRSS "/proc/$p/status" 2>/dev/null || echo "VmRSS: 0 kB")
            echo "$p ${line//[!0-9]/}"
        done >"$O/$H.rss-$1.txt"
    }
    sleep 30; rss start
    sleep $((duration > 45 ? duration - 40 : 5)); rss end
    status=0
    for p in "${pids[@]}"; do wait "$p" || status=1; done
    grep . /sys/class/infiniband/rxe0/ports/1/hw_counters/* | sed 's|.*/||' >"$O/$H.rxe-counters.txt"
    : >"$S/$H.clients-done"
    until [[ -e $S/A.clients-done && -e $S/B.clients-done ]]; do sleep 0.5; done
    kill -TERM "$serve"
    wait "$serve" || status=1
    exit $status
fi

duration=${1:-600}
[[ $duration =~ ^[0-9]+$ ]] && ((duration >= 60)) || { echo "soak: SECONDS must be a number, at least 60" >&2; exit 2; }
echo "== build (release)"
swift build -c release --product lnetctl --quiet
out=$PWD/results/soak
rm -rf "$out"
mkdir -p "$out"
echo "== soak: ${duration} s, two hosts, 512 operations in flight each way"
rc=0
SOFTROCE_2HOST_MEM=${SOAK_MEM:-3072} SOFTROCE_2HOST_TIMEOUT=$((duration + 900)) SOFTROCE_2HOST_GRACE=300 \
    scripts/softroce-2host.sh \
    --a "scripts/soak.sh --host $duration $out" --b "scripts/soak.sh --host $duration $out" || rc=$?
python3 - "$out" "$duration" <<'EOF'
import json, os, sys
out, duration = sys.argv[1], int(sys.argv[2])
classes = ["read 1B-64KiB x224", "write 1B-64KiB x224", "read 64KiB-1MiB x28", "write 64KiB-1MiB x28",
           "read 1MiB-16MiB x4", "write 1MiB-16MiB x4"]
total = {"attempted": 0, "succeeded": 0, "failed": 0, "bytes_verified": 0, "lost": 0}
ok = True
rows = []
for host in "AB":
    for i, name in enumerate(classes):
        try:
            o = json.load(open(os.path.join(out, f"{host}.client{i}.json")))
        except (OSError, ValueError):
            rows.append(f"{host} {name:22} no result"); ok = False; continue
        lost = o["attempted"] - o["succeeded"] - o["failed"]
        acct = o.get("lnet", {})
        if not acct.get("exactly_once"): lost += 1; ok = False
        verified = o["verified_ops"] == o["succeeded"] and o["verification_failures"] == 0
        total["attempted"] += o["attempted"]; total["succeeded"] += o["succeeded"]; total["failed"] += o["failed"]
        total["lost"] += lost
        if verified: total["bytes_verified"] += o["bytes"]
        ok = ok and lost == 0 and verified
        lnd = o.get("lnd") or {}
        errors = ", ".join(f"{k} x{v}" for k, v in sorted(o["error_kinds"].items()))
        rows.append(f"{host} {name:22} {o['attempted']:7} ops {o['failed']:4} failed {o['mb_per_s']:6.1f} MB/s "
                    f"p99 {o['latency_us']['p99'] / 1000:8.1f} ms  verified {str(verified):5} "
                    f"connections {lnd.get('connections_established')} timeouts {lnd.get('timeouts')}"
                    + (f"  errors: {errors}" if errors else ""))
def rss(host, label):
    try:
        return [int(line.split()[1]) for line in open(os.path.join(out, f"{host}.rss-{label}.txt"))]
    except OSError:
        return []
print(f"soak: {duration} s, 512 in flight each way, sizes 1 B-16 MiB")
print("\n".join(rows))
mem = {}
for host in "AB":
    start, end = rss(host, "start"), rss(host, "end")
    mem[host] = {"start_kib": start, "end_kib": end}
    print(f"{host} RSS KiB (server, 6 clients) start {start} end {end}; "
          f"sum {sum(start) // 1024} -> {sum(end) // 1024} MiB")
for host in "AB":
    try:
        s = json.load(open(os.path.join(out, f"{host}.serve.json")))
        print(f"{host} server: {s['operations']} operations, {s['bytes']} bytes served, {s['verification_failures']} "
              f"verification failures, exactly once {s['lnet']['exactly_once']}, max RSS {s['max_rss_kib'] // 1024} MiB")
        ok = ok and s["verification_failures"] == 0 and s["lnet"]["exactly_once"]
    except (OSError, ValueError, KeyError):
        print(f"{host} server: no result"); ok = False
print(f"total: {total['attempted']} attempted, {total['succeeded']} succeeded, {total['failed']} failed, "
      f"{total['lost']} lost, {total['bytes_verified']} bytes verified ({total['bytes_verified'] / 2**30:.2f} GiB)")
json.dump({"duration_s": duration, "total": total, "rows": rows, "memory": mem, "passed": ok},
          open(os.path.join(os.path.dirname(out), "soak.json"), "w"), indent=1)
print("soak:", "PASS" if ok else "FAIL")
sys.exit(0 if ok else 1)
EOF
judge=$?
# The hosts exit 1 when a client saw a failed operation: those are in the report above. A harness failure or a
# timeout (124/125) fails the soak.
((rc != 124 && rc != 125 && judge == 0))
