#!/usr/bin/env bash
# callgrind.sh - instructions per message through the LNet core and the RDMA LND's wire coding: a figure that does
# not move with the machine's load (valgrind counts instructions, not seconds).
#
# Usage: Benchmarks/callgrind.sh [--json] [N]
#
# Builds LNetInstructionBench (release) and runs each exchange under `valgrind --tool=callgrind` twice, with N and
# 2N repetitions (default N = 2000); instructions per message = (Ir(2N) - Ir(N)) / N, so start-up and shut-down
# cancel out:
#   put-ack    PUT of 8 bytes with an ACK, over the loopback LND with inline delivery (both ends in this process,
#              inline event queues): bind, put, match, receive, ACK, the three events, unlink
#   get-reply  GET of 8 bytes, the same way: bind, get, match, REPLY, the three events, unlink
#   wire       RDMA LND wire coding: encode + decode of an IMMEDIATE (LNet header + 8 B) and of a GET_REQ with a
#              one-fragment sink descriptor
# Runs with SWIFT_DETERMINISTIC_HASHING=1, so dictionaries hash the same way each run and the counts repeat.
# Env: CALLGRIND_BIN (a prebuilt LNetInstructionBench to measure instead, e.g. an older checkout's).
set -euo pipefail
cd "$(dirname "$0")/.."

json=0
n=2000
for arg in "$@"; do
    case $arg in
        --json) json=1 ;;
        -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
        *[!0-9]* | "") echo "usage: Benchmarks/callgrind.sh [--json] [N]" >&2; exit 2 ;;
        *) n=$arg ;;
    esac
done

scripts/install-deps.sh --bench >&2
if [[ -n ${CALLGRIND_BIN:-} ]]; then
    bin=$CALLGRIND_BIN
else
    swift build -c release --product LNetInstructionBench >&2
    bin="$(swift build -c release --show-bin-path)/LNetInstructionBench"
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# valgrind 3.19 cannot read the DWARF 5 debug information Swift 6 emits: count a copy without it.
cp "$bin" "$work/bench"
strip --strip-debug "$work/bench"
bin="$work/bench"

# instructions EXCHANGE COUNT: the total Ir of one run.
instructions() {
    SWIFT_DETERMINISTIC_HASHING=1 valgrind --tool=callgrind --callgrind-out-file="$work/out.%p" "$bin" "$1" "$2" >"$work/stdout" 2>"$work/stderr" || {
        echo "callgrind: $1 $2 failed:" >&2
        cat "$work/stdout" "$work/stderr" >&2
        exit 1
    }
    sed -n 's/^==[0-9]*== Collected : \([0-9]*\).*/\1/p' "$work/stderr"
}

rows=()
for exchange in put-ack get-reply wire; do
    one=$(instructions "$exchange" "$n")
    two=$(instructions "$exchange" $((2 * n)))
    per=$(((two - one) / n))
    rows+=("$exchange $per")
    ((json)) || printf '%-10s %9d instructions per message  (Ir %d at N=%d, %d at N=%d)\n' "$exchange" "$per" "$one" "$n" "$two" $((2 * n))
done
if ((json)); then
    printf '{"n": %d, "instructions_per_message": {' "$n"
    sep=""
    for row in "${rows[@]}"; do
        read -r name per <<<"$row"
        printf '%s"%s": %d' "$sep" "$name" "$per"
        sep=", "
    done
    printf '}}\n'
fi
