#!/usr/bin/env bash
# softroce-vm.sh - run a command next to a SoftRoCE (rdma_rxe) device.
#
# Usage:
#   scripts/softroce-vm.sh -- COMMAND [ARGS...]
#
# Runs COMMAND in a small QEMU VM (software emulation, TCG) booted from a Debian kernel that has rdma_rxe, and
# exits with COMMAND's exit status. Inside the VM:
#   - the host's whole filesystem is visible read-only (with a throw-away tmpfs overlay on top, so writes outside
#     the repository succeed but are lost), so /opt/swift, /usr/lib, ... are the host's;
#   - this repository is mounted read-write at the same path (writes reach the host: build results, results/...);
#   - COMMAND runs as root in the caller's working directory, with stdin from /dev/null;
#   - a veth pair v0/v1 (both up) carries 192.0.2.1/24 and 192.0.2.2/24 on v0 (the two test nodes) and
#     192.0.2.3/24 (a third party, e.g. a hand-driven peer in malformed-message tests); rxe0 sits on v0
#     (GID indexes 1-3 are the IPv4-mapped RoCEv2 GIDs; perftest needs "-x 1"); the VM has no NIC at all;
#   - net.ipv4.conf.all.accept_local=1 (rdma_cm to a local address), "ulimit -l unlimited", /dev/infiniband/*,
#     /proc, /sys, /dev/pts, /dev/shm and a tmpfs /tmp (unless the repository or the caller's directory is there);
#   - environment: the caller's PATH, HOME, TERM and every variable whose name starts with LND_, LNET_, SWIFT_,
#     RDMA_ or SOFTROCE_, plus SOFTROCE_VM=1.
# COMMAND's stdout and stderr are passed through live to this script's stdout and stderr (not a tty inside, so
# programs may block-buffer as they would into a pipe). Kernel messages go to a console log only. The harness's
# own diagnostics go to stderr, prefixed "softroce-vm:".
#
# If an RDMA device with an ACTIVE port already exists (/sys/class/infiniband/*/ports/*/state), or SOFTROCE_VM=1
# (already inside the VM), COMMAND is simply exec'ed.
#
# First use installs the needed Debian packages with apt-get (only those missing), downloads the kernel package
# (target of linux-image-amd64) and builds an initramfs, all cached under <repo>/.softroce/ (the cache path carries
# a recipe stamp; a changed recipe rebuilds). Later runs reuse the cache and do not touch apt.
#
# Environment:
#   SOFTROCE_VM_TIMEOUT   wall-clock limit for the whole VM in seconds (default 3000); QEMU is killed after it
#   SOFTROCE_VM_MEM       guest memory in MiB (default 4096)
#   SOFTROCE_VM_CPUS      guest vCPUs (default 2)
#   SOFTROCE_VM_RXE_TIMEOUT  seconds to wait for rxe0 to become ACTIVE inside the VM (default 60)
#   SOFTROCE_VM_KERNEL    kernel version to use, e.g. 6.1.0-56-amd64 (default: linux-image-amd64's target at the
#                         time of the first build; any complete cached build is reused)
#   SOFTROCE_VM_VERBOSE   1: report timings (boot to command start, total) on stderr
#   SOFTROCE_VM_KEEP      1: keep the per-run folder (console log with boot marks, QEMU log) and print its path
#   SOFTROCE_VM_APPEND    extra kernel command line (debugging, e.g. "loglevel=7"; goes to the console log)
#   SOFTROCE_VM_CPU       QEMU's -cpu model (default qemu64: -cpu max exposes AVX2, which TCG emulates slowly)
#   SOFTROCE_VM_CLOCK     the guest's clock source: hpet (default) or tsc (see the README's test-bed section)
#   SOFTROCE_VM           1 inside the VM (set by this script)
#
# How it works: QEMU (TCG; KVM guests hang on these machines) boots the kernel's uncompressed vmlinux through its
# PVH entry (skips the slow decompression) with a busybox initramfs. Its /init loads the modules, mounts the host
# root over virtio-9p read-only (overlaid by tmpfs), the per-run folder (a host temp folder: scripts, environment,
# status, "ready" mark) and the repository (read-write), then runs the per-run stage 2 (mounts, veth, rxe0) and
# COMMAND via chroot into the host root. COMMAND's stdout/stderr go through FIFOs to two virtio-serial ports that
# QEMU writes to files in the per-run folder, which "tail -f" streams here (byte-exact, no tty, no CR/LF games);
# the kernel console goes to console.log there. The guest writes COMMAND's status into the per-run folder and
# powers off. Notes: writes outside the repository land in tmpfs and are lost; the host's /tmp is not visible
# unless the caller's directory is under it; stdin is /dev/null. When the host is busy, latency figures turn
# bimodal (perftest "typical" ~4000 us = one 250 Hz tick; likely rxe's softirq work deferred to ksoftirqd behind
# a busy-polling process), and servers started with "& sleep 1" may not listen yet; compare figures only from
# runs on a quiet machine.
#
# Exit status: COMMAND's; 124 if SOFTROCE_VM_TIMEOUT expired; 125 if the harness failed (VM did not boot, kernel
# panic, rxe0 did not come up, ...) - then the reason and the tail of the console log are printed on stderr;
# 130/143 when interrupted by SIGINT/SIGTERM.
set -euo pipefail
shopt -s nullglob

readonly RECIPE_VERSION=2
# Modules loaded in the VM (with their dependencies, in modprobe's order). crc32_generic must precede rdma_rxe.
readonly MODULES=(virtio_pci virtio_console 9pnet_virtio 9p overlay veth crc32_generic rdma_rxe ib_uverbs rdma_ucm)
PROG=softroce-vm
# log, die, usage, squote (scripts/common.sh); the packages, the cache, both guest stages, the per-VM folder, QEMU.
. "$(dirname "${BASH_SOURCE[0]}")/softroce-lib.sh"

native_rdma_active() {
    local f
    for f in /sys/class/infiniband/*/ports/*/state; do
        [[ -r $f ]] && grep -q ACTIVE "$f" 2>/dev/null && return 0
    done
    return 1
}

# ---------------------------------------------------------------------------------------------------------------
# The guest: stage 1 (the initramfs /init) is stage1_init, stage 2 stage2_script in scripts/softroce-lib.sh; here
# its hooks. rxe0 goes on v0 and is ready once three of GIDs 1-4 are IPv4-mapped (one per address of v0).
readonly RXE_NETDEV=v0 RXE_GIDS='1 2 3 4' RXE_GIDS_NEEDED=3 RXE_GIDS_WHAT='all three IPv4 GIDs'
stage2_mounts() { :; }
stage2_network() {
    cat <<'EOF'
# Network: loopback, veth pair, two addresses on v0, rxe0 on v0. Nothing leaves the VM (it has no NIC).
# (busybox ip: quicker than the host's; it names the veth peer itself, so it is renamed to v1.)
ip link set lo up || fail "ip link set lo up"
ip link add v0 type veth || fail "cannot create veth pair"
read -r peer </sys/class/net/v0/iflink
for f in /sys/class/net/*/ifindex; do
    read -r i <"$f"
    [ "$i" = "$peer" ] && { d=${f%/ifindex}; peer=${d##*/}; break; }
done
[ "$peer" = v1 ] || ip link set "$peer" name v1 || fail "cannot rename the veth peer $peer to v1"
ip addr add 192.0.2.1/24 dev v0 || fail "ip addr add 192.0.2.1/24 dev v0"
ip addr add 192.0.2.2/24 dev v0 || fail "ip addr add 192.0.2.2/24 dev v0"
ip addr add 192.0.2.3/24 dev v0 || fail "ip addr add 192.0.2.3/24 dev v0"
ip link set v1 up && ip link set v0 up || fail "cannot bring up v0/v1"
echo 1 >/proc/sys/net/ipv4/conf/all/accept_local || fail "accept_local"
EOF
}
stage2_start() { :; }
stage2_end() { :; }
# The end of run.sh: COMMAND (args.sh: "set -- COMMAND ARGS...") is exec'ed.
run_command() {
    cat <<'EOF'
if ! command -v -- "$1" >/dev/null 2>&1; then
    printf 'softroce-vm: %s: command not found\n' "$1" >&2
    exit 127
fi
exec "$@"
EOF
}

# ---------------------------------------------------------------------------------------------------------------
# Host side.

RUN='' QEMU_PID='' TAIL_OUT='' TAIL_ERR='' TIMER_PID=
# shellcheck disable=SC2317  # invoked from traps
cleanup() {
    local pid
    for pid in "$QEMU_PID" "$TIMER_PID" "$TAIL_OUT" "$TAIL_ERR"; do
        kill_pid "$pid"
    done
    QEMU_PID='' TIMER_PID='' TAIL_OUT='' TAIL_ERR=
    remove_run_folder "${SOFTROCE_VM_KEEP:-0}"
}

run_vm() {
    local timeout=${SOFTROCE_VM_TIMEOUT:-3000} mem=${SOFTROCE_VM_MEM:-4096} cpus=${SOFTROCE_VM_CPUS:-2}
    RXE_TIMEOUT=${SOFTROCE_VM_RXE_TIMEOUT:-60}
    [[ $timeout =~ ^[0-9]+$ && $timeout -gt 0 ]] || die "SOFTROCE_VM_TIMEOUT must be a positive number of seconds"
    [[ $mem =~ ^[0-9]+$ ]] || die "SOFTROCE_VM_MEM must be a number (MiB)"
    [[ $cpus =~ ^[0-9]+$ ]] || die "SOFTROCE_VM_CPUS must be a number"
    [[ $RXE_TIMEOUT =~ ^[0-9]+$ ]] || die "SOFTROCE_VM_RXE_TIMEOUT must be a number of seconds"
    command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 not found"

    RUN=$(mktemp -d "${TMPDIR:-/tmp}/softroce-vm.XXXXXX")
    chmod 755 "$RUN"
    local name
    set_tmpfs_tmp
    vm_folder "$RUN" SVM_NAME=softroce-vm
    {
        printf 'SVM_CWD=%s\n' "$(squote "$PWD")"
        printf 'set --'
        for name in "$@"; do printf ' %s' "$(squote "$name")"; done
        printf '\n'
    } >"$RUN/args.sh"
    qemu_command softroce-vm "$cpus" "$mem" "$RUN" -nic none

    local t0 t1
    t0=$(date +%s.%N)
    "${QEMU_CMD[@]}" </dev/null >"$RUN/qemu.log" 2>&1 &
    QEMU_PID=$!
    tail -n +1 -s 0.2 --pid="$QEMU_PID" -f "$RUN/stdout" &
    TAIL_OUT=$!
    tail -n +1 -s 0.2 --pid="$QEMU_PID" -f "$RUN/stderr" >&2 &
    TAIL_ERR=$!
    sleep "$timeout" &
    TIMER_PID=$!

    local done_pid='' wait_rc=0 qemu_rc=0 timed_out=0
    wait -n -p done_pid "$QEMU_PID" "$TIMER_PID" || wait_rc=$?
    if [[ $done_pid == "$QEMU_PID" ]]; then
        qemu_rc=$wait_rc
        QEMU_PID=
        kill_pid "$TIMER_PID"; TIMER_PID=
    else
        timed_out=1
        TIMER_PID=
        kill_pid "$QEMU_PID"; QEMU_PID=
    fi
    # The tails end on their own once QEMU is gone, after a last read.
    wait "$TAIL_OUT" 2>/dev/null || true
    wait "$TAIL_ERR" 2>/dev/null || true
    TAIL_OUT='' TAIL_ERR=
    t1=$(date +%s.%N)

    if [[ ${SOFTROCE_VM_VERBOSE:-0} == 1 && -f $RUN/ready ]]; then
        local tr
        tr=$(stat -c %.3Y "$RUN/ready")
        log "$(awk -v a="$t0" -v b="$tr" -v c="$t1" -v u="$(cut -d' ' -f1 "$RUN/ready")" \
            'BEGIN { printf "command started %.2f s after QEMU launch (guest uptime %.2f s); total %.2f s", b - a, u, c - a }')"
    fi

    if ((timed_out)); then
        log "timed out after $timeout s (SOFTROCE_VM_TIMEOUT); QEMU was killed"
        show_console_tail "$RUN" 40
        return 124
    fi
    if [[ -f $RUN/status ]]; then
        local status
        status=$(<"$RUN/status")
        [[ $status =~ ^[0-9]+$ ]] || { log "bad status file: $status"; return 125; }
        return "$status"
    fi
    report_vm_failure "$RUN" '' "$qemu_rc"
    show_console_tail "$RUN" 40
    return 125
}

main() {
    case ${1:-} in
        --) shift ;;
        -h | --help) usage; exit 0 ;;
        -*) bad_usage ;;
    esac
    (($# > 0)) || bad_usage

    if [[ ${SOFTROCE_VM:-} == 1 ]] || native_rdma_active; then
        exec "$@"
    fi

    start_harness vm 'the VM'
    local rc=0
    run_vm "$@" || rc=$?
    exit "$rc"
}

main "$@"
