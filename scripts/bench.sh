#!/usr/bin/env bash
# bench.sh - the LND beside perftest and UCX on one rxe device, in one SoftRoCE VM run.
#
# Usage: scripts/bench.sh [--json]
#
# Builds lnetctl (release), then in ONE scripts/softroce-vm.sh run (natively when an RDMA device exists) on rxe0
# with 192.0.2.1 (server) and 192.0.2.2 (client):
#   - perftest: ib_read_bw and ib_write_bw at 4 KiB, 64 KiB and 1 MiB, ib_send_lat at 8 B (busy polling, and -e:
#     sleeping on completion events). Server in the background, waited for by PID; -x is the GID index of each
#     address, read from /sys/class/infiniband/rxe0/ports/1/gids;
#   - UCX (Debian's ucx-utils, rc_verbs on rxe0:1; its out-of-band exchange is TCP on 127.0.0.1): ucx_perftest
#     ucp_get and ucp_put_bw at the same sizes, tag_lat at 8 B;
#   - lnetctl selftest --verify: read (GET) and write (PUT) at the same sizes, in pull and in push mode (the server
#     is restarted with LND_GET_MODE/LND_PUT_MODE for each mode: a GET's mode is the server's, a PUT's the
#     client's, which `selftest --mode` sets); and lnetctl ping, once in the default event mode and once with
#     LND_POLL=busy on both nodes.
# Repeated BENCH_REPEAT times (perftest, UCX and the LND back to back in each repetition); figures are medians and
# each ratio is the median of the per-repetition ratios. scripts/bench-summary.py prints the table: each LND
# figure beside perftest and UCX, and the ratios LND / perftest and LND / UCX (bandwidth: LND / peer; latency:
# peer / LND; higher is better):
#   GET pull vs ib_read_bw, ucp_get; GET push vs ib_write_bw, ucp_put_bw; PUT pull vs ib_read_bw, ucp_get;
#   PUT push vs ib_write_bw, ucp_put_bw; ping RTT/2 (events) vs ib_send_lat -e; ping RTT/2 (busy) vs ib_send_lat,
#   tag_lat.
# Also CPU seconds per GiB moved (client + server lnetctl processes) and their peak RSS. Every self-test figure is
# from verified traffic (BENCH_VERIFY=0 turns that off, and the output says so).
# --json prints one JSON object: {"rows": [{name, lnd, perftest, ucx, unit, ratio, ratio_ucx, ...}], ...}.
# Raw outputs stay in results/bench/<timestamp>/.
#
# Environment: BENCH_REPEAT (default 3), BENCH_SECONDS per LND run (default 3), BENCH_CONCURRENCY (default 8),
#              BENCH_PING_COUNT (default 300), BENCH_VERIFY (default 1), BENCH_LNETCTL (a prebuilt lnetctl to
#              measure instead of building one, e.g. an older checkout's), SOFTROCE_VM_* (see softroce-vm.sh).
# Bandwidth is in MB/s with MB = 2^20 bytes, as perftest reports it.
set -euo pipefail
# log, usage, bad_usage, start_serve
. "$(dirname "$0")/common.sh"
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
    verify=()
    [[ ${BENCH_VERIFY:-1} == 1 ]] && verify=(--verify)
    dev=rxe0
    mkdir -p "$out"

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
    printf '{"server_gid": %s, "client_gid": %s, "verify": %s, "clocksource": "%s"}\n' "$gid_s" "$gid_c" \
        "$([[ ${#verify[@]} -gt 0 ]] && echo true || echo false)" \
        "$(cat /sys/devices/system/clocksource/clocksource0/current_clocksource 2>/dev/null)" >"$out/setup.json"

    # Iterations: a few seconds each at the 20-100 MB/s rxe manages under emulation.
    iterations() {
        case $1 in
            4096) echo 8000 ;;
            65536) echo 1500 ;;
            *) echo 100 ;;
        esac
    }

    port=18515
    # pair NAME SERVER-CMD... -- CLIENT-CMD...: the server in the background, the client against it (retried while
    # the server is not listening yet), then the server waited for by PID.
    pair() {
        local name=$1 server=() client=() try ok=0
        shift
        while [[ $1 != -- ]]; do server+=("$1"); shift; done
        shift
        client=("$@")
        timeout 120 "${server[@]}" >"$out/$name.server.txt" 2>&1 &
        local spid=$!
        for try in $(seq 1 40); do
            sleep 0.25
            if timeout 120 "${client[@]}" >"$out/$name.client.txt" 2>&1; then
                ok=1
                break
            fi
            grep -q -i "couldn't connect\|unable to connect\|connection refused\|failed to connect" "$out/$name.client.txt" || break
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
    perftest() { # NAME TOOL ARGS...
        local name=$1 tool=$2
        shift 2
        port=$((port + 1))
        pair "$name" "$tool" -d $dev -x "$gid_s" -F -p $port "$@" -- "$tool" -d $dev -x "$gid_c" -F -p $port "$@" $SERVER_ADDR
    }
    ucx() { # NAME TEST SIZE ITERATIONS
        port=$((port + 1))
        pair "$1" env UCX_NET_DEVICES=$dev:1 UCX_TLS=rc_verbs,ud_verbs,self UCX_UD_VERBS_ETH_DGID_CHECK=n \
            ucx_perftest -p $port -- \
            env UCX_NET_DEVICES=$dev:1 UCX_TLS=rc_verbs,ud_verbs,self UCX_UD_VERBS_ETH_DGID_CHECK=n \
            ucx_perftest 127.0.0.1 -p $port -t "$2" -s "$3" -n "$4" -w 10
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
    start_server() { # NAME [VAR=VALUE...]
        local name=$1 up=0
        shift
        start_serve "$out/serve-$name.ready" 60 env "$@" "$bin" serve --nid $SERVER_ADDR@o2ib --json \
            >"$out/serve-$name.json" 2>"$out/serve-$name.log" || up=$?
        server_pid=$SERVE_PID
        ((up == 0)) && return 0
        log "lnetctl serve ($name) did not come up: $(tail -n 3 "$out/serve-$name.log" | tr '\n' ' ')"
        exit 1
    }
    ping_run() { # NAME [VAR=VALUE...]
        local name=$1
        shift
        log "rep $rep: lnetctl ping x$ping_count ($name)"
        env "$@" "$bin" ping --nid $CLIENT_ADDR@o2ib $SERVER_ADDR@o2ib --count "$ping_count" --json \
            >"$out/lnd-$name-$rep.json" 2>"$out/lnd-$name-$rep.log" ||
            log "ping ($name) failed: $(tail -n 2 "$out/lnd-$name-$rep.log" | tr '\n' ' ')"
    }

    # Each repetition measures perftest, UCX and the LND back to back, so all see the same machine load.
    for rep in $(seq 1 "$repeat"); do
        for size in "${SIZES[@]}"; do
            n=$(iterations "$size")
            log "rep $rep: ib_read_bw / ib_write_bw / ucp_get / ucp_put_bw $size B x $n"
            perftest "ib_read_bw-$size-$rep" ib_read_bw -s "$size" -n "$n"
            perftest "ib_write_bw-$size-$rep" ib_write_bw -s "$size" -n "$n"
            ucx "ucp_get-$size-$rep" ucp_get "$size" "$n"
            ucx "ucp_put_bw-$size-$rep" ucp_put_bw "$size" "$n"
        done
        log "rep $rep: ib_send_lat 8 B (busy polling, and -e: completion events), tag_lat 8 B"
        perftest "ib_send_lat-8-$rep" ib_send_lat -s 8 -n 5000
        perftest "ib_send_lat_events-8-$rep" ib_send_lat -s 8 -n 1000 -e
        ucx "tag_lat-8-$rep" tag_lat 8 5000

        for mode in pull push; do
            start_server "$mode-$rep" LND_GET_MODE=$mode LND_PUT_MODE=$mode
            for size in "${SIZES[@]}"; do
                for op in read write; do
                    log "rep $rep: lnetctl selftest $op $mode $size B x$concurrency for ${seconds}s ${verify[*]}"
                    "$bin" selftest --nid $CLIENT_ADDR@o2ib --to $SERVER_ADDR@o2ib --op $op --size "$size" \
                        --concurrency "$concurrency" --duration "${seconds}s" --mode $mode "${verify[@]}" --json \
                        >"$out/lnd-$op-$mode-$size-$rep.json" 2>"$out/lnd-$op-$mode-$size-$rep.log" ||
                        log "selftest $op $mode $size failed: $(tail -n 2 "$out/lnd-$op-$mode-$size-$rep.log" | tr '\n' ' ')"
                done
            done
            [[ $mode == pull ]] && ping_run ping-events
            stop_server
        done
        start_server "busy-$rep" LND_POLL=busy
        ping_run ping-busy LND_POLL=busy
        stop_server
    done
    exit 0
fi

# ---------------------------------------------------------------------------------------------------------------
# Outside: build, run the VM once, report.
# ---------------------------------------------------------------------------------------------------------------
json=()
case "${1:-}" in
    --json) json=(--json) ;;
    "") ;;
    -h | --help) usage; exit 0 ;;
    *) bad_usage ;;
esac

started=$(date +%s)
scripts/install-deps.sh --vm --bench >&2
if [[ -n ${BENCH_LNETCTL:-} ]]; then
    bin=$(realpath "$BENCH_LNETCTL")
    log "measuring $bin (BENCH_LNETCTL)"
else
    log "building lnetctl (release)"
    swift build -c release --product lnetctl >&2
    bin="$(swift build -c release --show-bin-path)/lnetctl"
fi
out="$repo/results/bench/$(date +%Y%m%d-%H%M%S)"
mkdir -p "$out"
log "raw results in $out"
vm_status=0
# The VM passes on only LND_*, LNET_*, SWIFT_*, RDMA_* and SOFTROCE_* variables: hand the BENCH_* ones over here.
settings=()
for name in BENCH_REPEAT BENCH_SECONDS BENCH_CONCURRENCY BENCH_PING_COUNT BENCH_VERIFY; do
    [[ -n ${!name:-} ]] && settings+=("$name=${!name}")
done
scripts/softroce-vm.sh -- env "${settings[@]}" "$repo/scripts/bench.sh" --inside "$bin" "$out" >&2 || vm_status=$?
log "VM run done (status $vm_status) after $(($(date +%s) - started)) s"
exec scripts/bench-summary.py "$out" --vm-status "$vm_status" "${json[@]}"
