#!/usr/bin/env bash
# demo.sh - LNet over RDMA in one command: a self-test server and client on a SoftRoCE (rxe) device.
#
# Usage: scripts/demo.sh
#
# Installs what it needs (scripts/install-deps.sh --vm), builds lnetctl in release mode, then inside
# scripts/softroce-vm.sh (natively when an RDMA device exists) on rxe0:
#   lnetctl serve    --nid 192.0.2.1@o2ib &
#   lnetctl ping     --nid 192.0.2.2@o2ib 192.0.2.1@o2ib
#   lnetctl selftest --nid 192.0.2.2@o2ib --to 192.0.2.1@o2ib --op read  --size 1MiB --concurrency 8 --count 200 --verify
#   lnetctl selftest --nid 192.0.2.2@o2ib --to 192.0.2.1@o2ib --op write --size 1MiB --concurrency 8 --count 200 --verify
# prints the summaries, stops the server by its PID, and exits non-zero if a run failed or did not verify.
set -euo pipefail
# log, die, bad_usage, start_serve
. "$(dirname "$0")/common.sh"
cd "$(dirname "$0")/.."
repo=$(pwd)

SERVER=192.0.2.1@o2ib
CLIENT=192.0.2.2@o2ib

if [[ "${1:-}" == "--inside" ]]; then
    bin=$2
    status=0
    ready=$(mktemp -u "${TMPDIR:-/tmp}/lnetctl-serve.XXXXXX")
    echo "== lnetctl devices"
    "$bin" devices
    echo
    echo "== lnetctl serve --nid $SERVER &"
    up=0
    start_serve "$ready" 60 "$bin" serve --nid $SERVER || up=$?
    server_pid=$SERVE_PID
    trap 'kill -TERM $server_pid 2>/dev/null || true' EXIT
    ((up != 1)) || die "lnetctl serve exited early"
    ((up != 2)) || die "lnetctl serve did not come up in 60 s"

    echo
    echo "== lnetctl ping --nid $CLIENT $SERVER --count 5"
    "$bin" ping --nid $CLIENT $SERVER --count 5 || status=1

    for op in read write; do
        echo
        echo "== lnetctl selftest --nid $CLIENT --to $SERVER --op $op --size 1MiB --concurrency 8 --count 200 --verify"
        "$bin" selftest --nid $CLIENT --to $SERVER --op $op --size 1MiB --concurrency 8 --count 200 --verify || status=1
    done

    echo
    echo "== stopping the server (kill -TERM $server_pid)"
    kill -TERM $server_pid
    wait $server_pid || { log "lnetctl serve exited with status $?"; status=1; }
    trap - EXIT
    exit $status
fi

[[ $# -eq 0 ]] || bad_usage
started=$(date +%s)
echo "== installing dependencies (scripts/install-deps.sh --vm)"
scripts/install-deps.sh --vm
echo "== building lnetctl (swift build -c release --product lnetctl)"
swift build -c release --product lnetctl
bin="$(swift build -c release --show-bin-path)/lnetctl"
echo "== running on rxe0 (scripts/softroce-vm.sh)"
status=0
scripts/softroce-vm.sh -- "$repo/scripts/demo.sh" --inside "$bin" || status=$?
echo
if ((status == 0)); then
    echo "demo: OK - reads and writes verified over rxe ($(($(date +%s) - started)) s)"
else
    log "FAILED (status $status)"
fi
exit $status
