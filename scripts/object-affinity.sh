#!/usr/bin/env bash
# object-affinity.sh - object affinity or client affinity? The object-server benchmark over rxe (issue 14).
#
# Usage: scripts/object-affinity.sh [--json]
#
# Builds ObjectAffinityBench (release), then for 2 and then 4 vCPUs boots the SoftRoCE VM once
# (scripts/softroce-vm.sh, SOFTROCE_VM_CPUS) and runs, on rxe0 with the server on 192.0.2.1 and six clients on
# 192.0.2.2-7 (192.0.2.4-7 are added to the VM's v0 for the run), one cell per server LNET_PLACEMENT (nid, hint,
# none):
#   - 8 objects: client i reads and writes 4 KiB pages of objects i, i+1 and i+2 (mod 8), so neighbours share;
#   - 1 object (the seed's counter-case): every client on object 0, where NID affinity spreads the object's state
#     over every CPU.
# Each cell runs OA_SECONDS (default 10) with OA_INFLIGHT (default 4) requests in flight per client; requests carry
# hints (major = object + 1). It prints a table: ops/s, p50/p99 latency, object lock acquisitions that found the
# lock held, object CPU changes (the object's lock taken on another CPU than last time), operations per partition,
# cross-partition hand-offs and mean queuelet size; with --json, one JSON object with every cell. Raw outputs stay
# in results/object-affinity/<timestamp>/. The 4-vCPU VM runs on this machine's 2 cores: its figures are noisier.
set -euo pipefail
. "$(dirname "$0")/common.sh"
cd "$(dirname "$0")/.."
repo=$(pwd)

SECONDS_PER_CELL=${OA_SECONDS:-10}
INFLIGHT=${OA_INFLIGHT:-4}
POLICIES=(nid hint none)

if [[ ${1:-} == --inside ]]; then
    # In the VM: OUT CPUS.
    out=$2 cpus=$3
    bin=$repo/.build/release/ObjectAffinityBench
    for last in 4 5 6 7; do ip addr add "192.0.2.$last/24" dev v0 2>/dev/null || true; done
    sleep 1  # the rxe GID table follows the new addresses
    export LND_IMMEDIATE_SIZE=8192 LND_TIMEOUT=20
    cell() {  # objects policy
        local objects=$1 policy=$2 name="$cpus-cpu-$1-obj-$2" server_pid rc=0
        rm -f "$out/$name.ready" "$out/$name.stop"
        LNET_PLACEMENT=$policy "$bin" server --address 192.0.2.1 --objects "$objects" \
            --ready-file "$out/$name.ready" --stop-file "$out/$name.stop" >"$out/$name.server.json" 2>"$out/$name.server.err" &
        server_pid=$!
        wait_ready "$out/$name.ready" 30 kill -0 "$server_pid" || {
            log "$name: server did not come up"; cat "$out/$name.server.err" >&2; kill "$server_pid" 2>/dev/null || true; return 1
        }
        LND_SCHEDULERS=1 "$bin" clients --server 192.0.2.1 --addresses 192.0.2.2,192.0.2.3,192.0.2.4,192.0.2.5,192.0.2.6,192.0.2.7 \
            --objects "$objects" --inflight "$INFLIGHT" --seconds "$SECONDS_PER_CELL" >"$out/$name.clients.json" 2>"$out/$name.clients.err" || rc=$?
        touch "$out/$name.stop"
        wait "$server_pid" || rc=$?
        ((rc == 0)) || { log "$name failed ($rc)"; cat "$out/$name.clients.err" "$out/$name.server.err" >&2; return 1; }
        log "$name: $(cat "$out/$name.clients.json")"
    }
    for objects in 8 1; do
        for policy in "${POLICIES[@]}"; do cell "$objects" "$policy"; done
    done
    exit 0
fi

json=0
case ${1:-} in
    --json) json=1 ;;
    "") ;;
    -h | --help) usage; exit 0 ;;
    *) bad_usage "unknown argument: $1" ;;
esac

out=$repo/results/object-affinity/$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$out"
log "building ObjectAffinityBench (release)"
swift build -c release --product ObjectAffinityBench >"$out/build.txt" 2>&1 || { cat "$out/build.txt" >&2; die "build failed"; }
for cpus in 2 4; do
    log "VM with $cpus vCPUs"
    SOFTROCE_VM_CPUS=$cpus scripts/softroce-vm.sh -- bash "$repo/scripts/object-affinity.sh" --inside "$out" "$cpus" \
        >"$out/vm-$cpus.txt" 2>&1 || { cat "$out/vm-$cpus.txt" >&2; die "the $cpus-vCPU run failed"; }
done

python3 - "$out" "$json" <<'EOF'
import json, os, sys
out, as_json = sys.argv[1], sys.argv[2] == "1"
cells = []
for cpus in (2, 4):
    for objects in (8, 1):
        for policy in ("nid", "hint", "none"):
            name = f"{cpus}-cpu-{objects}-obj-{policy}"
            try:
                server = json.load(open(os.path.join(out, name + ".server.json")))
                clients = json.load(open(os.path.join(out, name + ".clients.json")))
            except FileNotFoundError:
                continue
            cells.append({"vcpus": cpus, "objects": objects, "policy": policy, "ops_per_s": clients["ops_per_s"],
                          "p50_us": clients["p50_us"], "p99_us": clients["p99_us"], "operations": server["operations"],
                          "lock_contended": server["lock_contended"], "object_cpu_changes": server["object_cpu_changes"],
                          "ops_per_partition": server["ops_per_partition"],
                          "partitions_per_object": server["partitions_per_object"],
                          "cross_partition": server["cross_partition"], "held_for_order": server["held_for_order"],
                          "mean_batch": server["mean_batch"]})
json.dump({"cells": cells}, open(os.path.join(out, "cells.json"), "w"), indent=1)
if as_json:
    print(json.dumps({"cells": cells, "results": out}))
    sys.exit(0)
print("| vCPUs | objects | placement | ops/s | p50 us | p99 us | lock held | object CPU changes | ops per partition | cross-partition | held for order | mean queuelet |")
print("|---:|---:|---|---:|---:|---:|---:|---:|---|---:|---:|---:|")
for c in cells:
    ops = c["operations"] or 1
    print(f"| {c['vcpus']} | {c['objects']} | {c['policy']} | {c['ops_per_s']:.0f} | {c['p50_us']:.0f} | {c['p99_us']:.0f} | "
          f"{100 * c['lock_contended'] / ops:.1f}% | {100 * c['object_cpu_changes'] / ops:.1f}% | {c['ops_per_partition']} | "
          f"{c['cross_partition']} | {c['held_for_order']} | {c['mean_batch']:.2f} |")
print(f"raw: {out}")
EOF
