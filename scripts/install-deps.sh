#!/usr/bin/env bash
# Installs the Debian packages the build and the test bed need, only those missing.
# Usage: scripts/install-deps.sh [--vm] [--bench]
#   --vm     adds what the SoftRoCE VM and perftest need
#   --bench  adds what scripts/bench.sh and Benchmarks/callgrind.sh compare with or measure by: UCX, valgrind
set -euo pipefail
# log, bad_usage
. "$(dirname "$0")/common.sh"

packages=(libibverbs-dev librdmacm-dev ibverbs-providers rdma-core python3)
for flag in "$@"; do
    case $flag in
        --vm) packages+=(qemu-system-x86 busybox-static kmod cpio iproute2 ibverbs-utils rdmacm-utils perftest xz-utils) ;;
        --bench) packages+=(ucx-utils valgrind) ;;
        *) bad_usage ;;
    esac
done

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    sudo_cmd=()
    [[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
    "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
