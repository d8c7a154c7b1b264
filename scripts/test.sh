#!/usr/bin/env bash
# Builds and runs every test: the unit tests on this machine, then the device tests over a real rxe device
# (inside the SoftRoCE VM of scripts/softroce-vm.sh when this machine has no RDMA device), then the two-host fault
# suite (scripts/fault-suite.sh: two VMs, faults on the link and the server; each case counts as one test).
# Fails if any test fails, or if no device test ran on the device.
#
# Env: TEST_FILTER  extra regex passed to --filter for both runs (default: all); when set, the fault suite is
#                   skipped unless FAULT_SUITE=1
#      FAULT_SUITE  0: skip the fault suite; 1: run it even with TEST_FILTER
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

scripts/install-deps.sh --vm

echo "== build (debug, with tests)"
swift build --build-tests --quiet
bin="$repo/.build/debug/swift-lnetPackageTests.xctest"

mkdir -p results
rm -f results/*.xunit.xml
filter=()
[[ -n "${TEST_FILTER:-}" ]] && filter=(--filter "$TEST_FILTER")

echo "== unit tests (this machine; device tests skip here unless it has RDMA)"
host_status=0
"$bin" --testing-library swift-testing "${filter[@]}" --xunit-output results/host.xunit.xml || host_status=$?

echo "== device tests over rxe (scripts/softroce-vm.sh)"
device_status=0
scripts/softroce-vm.sh -- env RDMA_REQUIRE_DEVICE=1 "$bin" --testing-library swift-testing \
    --filter "${TEST_FILTER:-DeviceTests}" --xunit-output "$repo/results/device.xunit.xml" || device_status=$?

fault_status=0 fault_passed=0 fault_total=0 run_faults=1
[[ -n "${TEST_FILTER:-}" ]] && run_faults=0
[[ -n "${FAULT_SUITE:-}" ]] && run_faults=$FAULT_SUITE
if ((run_faults)); then
    echo "== fault suite over two rxe hosts (scripts/fault-suite.sh)"
    scripts/fault-suite.sh || fault_status=$?
    read -r fault_passed fault_total < <(python3 -c 'import json; o = json.load(open("results/fault-suite.json")); print(o["passed"], o["total"])' 2>/dev/null || echo "0 1")
fi

read -r host_passed host_failed host_skipped < <(scripts/count-xunit.py results/host.xunit.xml 2>/dev/null || echo "0 1 0")
read -r dev_passed dev_failed dev_skipped < <(scripts/count-xunit.py results/device.xunit.xml 2>/dev/null || echo "0 1 0")
echo "== summary"
echo "machine: $host_passed passed, $host_failed failed, $host_skipped skipped (exit $host_status)"
echo "device (rxe): $dev_passed passed, $dev_failed failed, $dev_skipped skipped (exit $device_status)"
if ((run_faults)); then
    echo "fault suite (two rxe hosts): $fault_passed of $fault_total cases passed (exit $fault_status)"
fi
if ((dev_passed == 0)); then
    echo "FAIL: no device test ran on the rxe device" >&2
    device_status=1
fi
total_passed=$((host_passed + dev_passed + fault_passed))
total_failed=$((host_failed + dev_failed + fault_total - fault_passed))
echo "tests: $total_passed passed, $total_failed failed" | tee results/summary.txt
((host_status == 0 && device_status == 0 && fault_status == 0 && total_failed == 0))
