#!/usr/bin/env bash
# Fuzzes the wire-message, connection-handshake and LNet header parsers with libFuzzer for a bounded time.
# No RDMA device is needed: the target only parses bytes.
#
# Usage: scripts/fuzz.sh [SECONDS]        (default 60)
#
# Builds Fuzz/WireFuzz with libFuzzer and AddressSanitizer, optimized but with the standard library's debug
# bounds checks kept (-assert-config Debug), into .build-fuzz (so the main .build keeps its flags). Seeds are
# Fuzz/corpus (committed) and Fuzz/crashes (every crash ever found, kept as regression inputs); new
# interesting inputs go to .build-fuzz/corpus, which persists between local runs. A crash, timeout, leak or
# out-of-memory input is copied to Fuzz/crashes/ and the script exits non-zero; commit that file with the
# fix (Tests/RDMALNDTests/FuzzRegressionTests.swift replays it in every test run).
#
# Env: FUZZ_ARGS  extra libFuzzer flags (e.g. "-seed=1 -jobs=2")
set -euo pipefail
# log, die, bad_usage
. "$(dirname "$0")/common.sh"
DIE_STATUS=2
cd "$(dirname "$0")/.."

seconds=${1:-60}
if ! [[ "$seconds" =~ ^[0-9]+$ ]] || ((seconds < 1)); then
    bad_usage
fi

scripts/install-deps.sh

swiftc=$(command -v swiftc || true)
if [[ -z "$swiftc" && -x /opt/swift/usr/bin/swiftc ]]; then
    export PATH=/opt/swift/usr/bin:$PATH
    swiftc=/opt/swift/usr/bin/swiftc
fi
[[ -n "$swiftc" ]] || die "swiftc not found on PATH"
runtime="$(dirname "$(readlink -f "$swiftc")")/../lib/swift/clang/lib/linux/libclang_rt.fuzzer-$(uname -m).a"
if [[ ! -f "$runtime" ]]; then
    die "this Swift toolchain has no libFuzzer runtime ($runtime); use a swift.org Linux toolchain"
fi

scratch=.build-fuzz
echo "== build WireFuzz (libFuzzer + AddressSanitizer, $scratch)"
build_log=$(mktemp)
trap 'rm -f "$build_log"' EXIT
# SwiftPM's --sanitize fuzzer links libFuzzer's main; a later -sanitize= replaces an earlier one, so the
# compile flags name both sanitizers in one -sanitize=.
if ! swift build -c release --scratch-path "$scratch" --product WireFuzz --sanitize fuzzer \
    -Xswiftc -sanitize=fuzzer,address -Xswiftc -assert-config -Xswiftc Debug -Xswiftc -DFUZZING \
    >"$build_log" 2>&1; then
    cat "$build_log" >&2
    die "build failed"
fi
# ld.gold's note about an ASan-internal symbol is harmless.
grep -v -e '__asan_extra_spill_area' -e '^\[' "$build_log" || true
bin="$scratch/release/WireFuzz"

work="$scratch/corpus"
artifacts="$scratch/artifacts"
mkdir -p "$work" "$artifacts" Fuzz/crashes
rm -f "$artifacts"/*
log="$scratch/fuzz.log"

echo "== fuzz for $seconds s ($(find Fuzz/corpus -type f | wc -l) seeds, $(find Fuzz/crashes -type f ! -name '.*' | wc -l) kept crashes)"
start=$(date +%s)
set +e
# libFuzzer reports the crash itself; Swift's backtracer would take its signals first.
# shellcheck disable=SC2086
SWIFT_BACKTRACE=enable=no ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1} \
    "$bin" "$work" Fuzz/corpus Fuzz/crashes -dict=Fuzz/wire.dict -max_total_time="$seconds" -timeout=10 \
    -rss_limit_mb=4096 -print_final_stats=1 -artifact_prefix="$artifacts/" ${FUZZ_ARGS:-} >"$log" 2>&1
status=$?
set -e
elapsed=$(($(date +%s) - start))

# The run's progress and any report, without libFuzzer's dictionary suggestions.
grep -v -e '^"' -e 'Recommended dictionary' "$log" | tail -n 40

executions=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
if [[ -z "$executions" ]]; then  # killed before its final stats: the last progress line
    executions=$(grep -o '^#[0-9]*' "$log" | tail -n 1 | tr -d '#')
fi
rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)

found=()
for file in "$artifacts"/*; do
    [[ -f "$file" ]] || continue
    cp "$file" Fuzz/crashes/
    found+=("Fuzz/crashes/$(basename "$file")")
done

echo "== result"
for file in "${found[@]}"; do
    echo "fuzz: kept $file ($(wc -c <"$file") bytes): $(od -An -tx1 -v "$file" | tr -s ' \n' ' ' | cut -c1-200)"
    echo "fuzz: reproduce with: SWIFT_BACKTRACE=enable=no $bin $file"
done
echo "fuzz: ${executions:-0} executions in $elapsed s (${rate:-?}/s), ${#found[@]} crashes"
if ((${#found[@]} > 0)); then
    exit 1
fi
if ((status != 0)); then
    log "libFuzzer exited with status $status without a crash input; see $log"
    exit "$status"
fi
