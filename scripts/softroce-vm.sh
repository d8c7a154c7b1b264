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
readonly PACKAGES=(qemu-system-x86 busybox-static kmod cpio iproute2 rdma-core ibverbs-providers ibverbs-utils
    rdmacm-utils perftest libibverbs-dev librdmacm-dev)
# Modules loaded in the VM (with their dependencies, in modprobe's order). crc32_generic must precede rdma_rxe.
readonly MODULES=(virtio_pci virtio_console 9pnet_virtio 9p overlay veth crc32_generic rdma_rxe ib_uverbs rdma_ucm)

log() { printf 'softroce-vm: %s\n' "$*" >&2; }
die() { log "$*"; exit 125; }

usage() {
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
}

# Single-quote a string for POSIX sh.
squote() { printf "'%s'" "${1//\'/\'\\\'\'}"; }

native_rdma_active() {
    local f
    for f in /sys/class/infiniband/*/ports/*/state; do
        [[ -r $f ]] && grep -q ACTIVE "$f" 2>/dev/null && return 0
    done
    return 1
}

# ---------------------------------------------------------------------------------------------------------------
# Guest stage 1 (the initramfs /init): stage1_init in scripts/softroce-lib.sh.

# Guest stage 2: sourced by stage 1 (busybox sh, PID 1); written per run, not cached. Sets up the host root at
# /newroot, rxe0, then runs COMMAND there through chroot (run.sh, by the host's /bin/sh) and powers off.
stage2_script() {
    cat <<'EOF'
# softroce-vm stage 2
N=/newroot
R=$N/run/softroce-vm
HOSTPATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
O9P=trans=virtio,version=9p2000.L,msize=512000
ERRFD=''
finish() {
    sync
    poweroff -f
    echo o >/proc/sysrq-trigger
    sleep 60
}
fail() {
    echo "softroce-vm: $*"
    [ -n "$ERRFD" ] && echo "softroce-vm: $*" >&8
    printf '%s\n' "$*" >"$R/error"
    finish
}
# A program of the host root, by absolute path (busybox's chroot would prefer its own applet of the same name).
host() {
    for d in /usr/local/sbin /usr/local/bin /usr/sbin /usr/bin /sbin /bin; do
        if [ -x "$N$d/$1" ]; then
            c=$1
            shift
            env -i PATH="$HOSTPATH" /bin/chroot "$N" "$d/$c" "$@"
            return
        fi
    done
    echo "softroce-vm: $1 not found in the host root"
    return 127
}
. "$R/vm.sh" || fail "cannot read $R/vm.sh"

# The repository, read-write; the usual file systems.
mkdir -p "$N$SVM_REPO" && mount -t 9p -o "$O9P,cache=mmap" repo "$N$SVM_REPO" \
    || fail "mount of the repository (9p) failed"
mount -t proc proc "$N/proc" || fail "mount /proc"
mount -t sysfs sysfs "$N/sys" || fail "mount /sys"
mount -t devtmpfs devtmpfs "$N/dev" || fail "mount /dev"
mkdir -p "$N/dev/pts" "$N/dev/shm"
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts "$N/dev/pts" || fail "mount /dev/pts"
mount -t tmpfs -o mode=1777 tmpfs "$N/dev/shm" || fail "mount /dev/shm"
[ -e "$N/dev/fd" ] || ln -s /proc/self/fd "$N/dev/fd"
[ -e "$N/dev/stdin" ] || ln -s /proc/self/fd/0 "$N/dev/stdin"
[ -e "$N/dev/stdout" ] || ln -s /proc/self/fd/1 "$N/dev/stdout"
[ -e "$N/dev/stderr" ] || ln -s /proc/self/fd/2 "$N/dev/stderr"
if [ "$SVM_TMPFS_TMP" = 1 ]; then
    mount -t tmpfs -o mode=1777 tmpfs "$N/tmp" || fail "mount /tmp"
fi
hostname softroce-vm

# The two virtio-serial ports that carry COMMAND's stdout and stderr to the host.
port() {
    for f in /sys/class/virtio-ports/*/name; do
        [ -r "$f" ] && read -r pn <"$f" && [ "$pn" = "$1" ] && { d=${f%/name}; echo "/dev/${d##*/}"; return 0; }
    done
    return 1
}
n=0
until OUTPORT=$(port softroce.stdout) && ERRPORT=$(port softroce.stderr) && [ -c "$OUTPORT" ] && [ -c "$ERRPORT" ]
do
    n=$((n + 1)); [ $n -gt 300 ] && fail "virtio-serial ports did not appear"
    sleep 0.1
done
exec 7>"$OUTPORT" 8>"$ERRPORT" || fail "cannot open $OUTPORT / $ERRPORT"
ERRFD=8
mark "file systems mounted"

ulimit -l unlimited || fail "ulimit -l unlimited"
[ -n "$SVM_NOFILE" ] && ulimit -n "$SVM_NOFILE" 2>/dev/null

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
host rdma link add rxe0 type rxe netdev v0 || fail "rdma link add rxe0 type rxe netdev v0 failed"
P=/sys/class/infiniband/rxe0/ports/1
n=0
while :; do
    gids=0
    for i in 1 2 3 4; do
        g=''
        read -r g <"$P/gids/$i" 2>/dev/null
        case $g in 0000:0000:0000:0000:0000:ffff:*) gids=$((gids + 1)) ;; esac
    done
    st=''
    read -r st <"$P/state" 2>/dev/null
    case $st in *ACTIVE*)
        [ $gids -ge 3 ] && [ -c /dev/infiniband/uverbs0 ] && [ -c /dev/infiniband/rdma_cm ] && break ;;
    esac
    n=$((n + 1))
    [ $n -gt $((SVM_RXE_TIMEOUT * 10)) ] &&
        fail "rxe0 port 1 not ACTIVE with all three IPv4 GIDs after $SVM_RXE_TIMEOUT s (state: $st, IPv4 GIDs: $gids)"
    sleep 0.1
done
mark "rxe0 active"
cat /proc/uptime >"$R/ready"

# COMMAND writes into FIFOs relayed by cat to the ports, so that it may reopen /dev/stdout or /dev/stderr
# (a virtio-serial port can be open only once).
mkdir -p /dev/softroce-vm && mkfifo /dev/softroce-vm/out /dev/softroce-vm/err || fail "mkfifo"
cat /dev/softroce-vm/out >&7 8>&- &
RO=$!
cat /dev/softroce-vm/err >&8 7>&- &
RE=$!
# (In the background, so that the shell reports no "Killed" when COMMAND dies of a signal.)
env -i /bin/chroot "$N" /bin/sh /run/softroce-vm/run.sh >/dev/softroce-vm/out 2>/dev/softroce-vm/err 7>&- 8>&- &
wait $!
status=$?
mark "command exited with status $status"
# Background processes that COMMAND left behind may still hold the FIFOs: give the relays 2 s to drain.
(sleep 2; kill $RO $RE 2>/dev/null) 7>&- 8>&- &
W=$!
wait $RO $RE
kill $W 2>/dev/null
[ -f "$R/error" ] && fail "$(cat "$R/error")"
sync
echo "$status" >"$R/status.tmp" && mv "$R/status.tmp" "$R/status"
finish
EOF
}

# Run by the host's /bin/sh in the host root (chroot), with an empty environment: the caller's environment, the
# caller's working directory, then exec COMMAND.
run_script() {
    cat <<'EOF'
. /run/softroce-vm/env.sh || exit 125
. /run/softroce-vm/args.sh || exit 125
if ! cd "$SVM_CWD"; then
    echo "cannot change to $SVM_CWD inside the VM" >/run/softroce-vm/error
    exit 125
fi
unset SVM_CWD
if ! command -v -- "$1" >/dev/null 2>&1; then
    printf 'softroce-vm: %s: command not found\n' "$1" >&2
    exit 127
fi
exec "$@"
EOF
}
# ---------------------------------------------------------------------------------------------------------------
# Host side.

. "$(dirname "${BASH_SOURCE[0]}")/softroce-lib.sh"

RUN='' QEMU_PID='' TAIL_OUT='' TAIL_ERR='' TIMER_PID=
# shellcheck disable=SC2317  # invoked from traps
cleanup() {
    local pid
    for pid in "$QEMU_PID" "$TIMER_PID" "$TAIL_OUT" "$TAIL_ERR"; do
        kill_pid "$pid"
    done
    QEMU_PID='' TIMER_PID='' TAIL_OUT='' TAIL_ERR=
    if [[ -n $RUN ]]; then
        if [[ ${SOFTROCE_VM_KEEP:-0} == 1 ]]; then
            log "run folder kept: $RUN"
        else
            rm -rf "$RUN"
        fi
        RUN=
    fi
    [[ -n $BUILD_TMP ]] && rm -rf "$BUILD_TMP"
    BUILD_TMP=
    return 0
}
# shellcheck disable=SC2317  # invoked from traps
on_signal() {
    trap - INT TERM HUP
    log "interrupted ($1); stopping the VM"
    cleanup
    case $1 in INT) exit 130 ;; HUP) exit 129 ;; *) exit 143 ;; esac
}

show_console_tail() {
    if [[ -s $RUN/console.log ]]; then
        log "last lines of the VM console:"
        tail -n 40 "$RUN/console.log" | tr -d '\r' | sed 's/^/softroce-vm: | /' >&2
    fi
    if [[ -s $RUN/qemu.log ]]; then
        log "QEMU said:"
        tail -n 20 "$RUN/qemu.log" | sed 's/^/softroce-vm: | /' >&2
    fi
}

run_vm() {
    local timeout=${SOFTROCE_VM_TIMEOUT:-3000} mem=${SOFTROCE_VM_MEM:-4096} cpus=${SOFTROCE_VM_CPUS:-2}
    local rxe_timeout=${SOFTROCE_VM_RXE_TIMEOUT:-60}
    [[ $timeout =~ ^[0-9]+$ && $timeout -gt 0 ]] || die "SOFTROCE_VM_TIMEOUT must be a positive number of seconds"
    [[ $mem =~ ^[0-9]+$ ]] || die "SOFTROCE_VM_MEM must be a number (MiB)"
    [[ $cpus =~ ^[0-9]+$ ]] || die "SOFTROCE_VM_CPUS must be a number"
    [[ $rxe_timeout =~ ^[0-9]+$ ]] || die "SOFTROCE_VM_RXE_TIMEOUT must be a number of seconds"
    command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 not found"

    RUN=$(mktemp -d "${TMPDIR:-/tmp}/softroce-vm.XXXXXX")
    chmod 755 "$RUN"
    local cwd=$PWD tmpfs_tmp=1 name
    [[ $REPO == /tmp || $REPO == /tmp/* || $cwd == /tmp || $cwd == /tmp/* ]] && tmpfs_tmp=0
    {
        printf 'SVM_REPO=%s\n' "$(squote "$REPO")"
        printf 'SVM_TMPFS_TMP=%s\n' "$tmpfs_tmp"
        printf 'SVM_RXE_TIMEOUT=%s\n' "$rxe_timeout"
        printf 'SVM_NOFILE=%s\n' "$(ulimit -n)"
    } >"$RUN/vm.sh"
    {
        printf 'SVM_CWD=%s\n' "$(squote "$cwd")"
        printf 'set --'
        for name in "$@"; do printf ' %s' "$(squote "$name")"; done
        printf '\n'
    } >"$RUN/args.sh"
    {
        for name in PATH HOME TERM; do
            [[ -v $name ]] && printf 'export %s=%s\n' "$name" "$(squote "${!name}")"
        done
        while IFS= read -r name; do
            case $name in
                LND_* | LNET_* | SWIFT_* | RDMA_* | SOFTROCE_*)
                    printf 'export %s=%s\n' "$name" "$(squote "${!name}")" ;;
            esac
        done < <(compgen -e)
        printf 'export SOFTROCE_VM=1\n'
    } >"$RUN/env.sh"
    stage2_script >"$RUN/stage2.sh"
    run_script >"$RUN/run.sh"
    : >"$RUN/stdout"
    : >"$RUN/stderr"
    : >"$RUN/console.log"

    local r9=security_model=none,multidevs=remap
    local qemu=(qemu-system-x86_64 -name softroce-vm -accel tcg -cpu "$(guest_cpu)" -machine pc -smp "$cpus" -m "$mem"
        -nodefaults -no-user-config -display none -nic none -no-reboot -monitor none
        -serial "file:$(qesc "$RUN/console.log")"
        -kernel "$(qesc "$KERNEL_IMAGE")" -initrd "$(qesc "$INITRD")"
        -append "$(guest_append)"
        -virtfs "local,path=/,mount_tag=hostroot,readonly=on,$r9"
        -virtfs "local,path=$(qesc "$REPO"),mount_tag=repo,$r9"
        -virtfs "local,path=$(qesc "$RUN"),mount_tag=svmrun,$r9"
        -device "virtio-serial-pci,id=vser"
        -chardev "file,id=svmout,append=on,path=$(qesc "$RUN/stdout")"
        -device "virtserialport,bus=vser.0,chardev=svmout,name=softroce.stdout"
        -chardev "file,id=svmerr,append=on,path=$(qesc "$RUN/stderr")"
        -device "virtserialport,bus=vser.0,chardev=svmerr,name=softroce.stderr")

    local t0 t1
    t0=$(date +%s.%N)
    "${qemu[@]}" </dev/null >"$RUN/qemu.log" 2>&1 &
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
        show_console_tail
        return 124
    fi
    if [[ -f $RUN/status ]]; then
        local status
        status=$(<"$RUN/status")
        [[ $status =~ ^[0-9]+$ ]] || { log "bad status file: $status"; return 125; }
        return "$status"
    fi
    if [[ -f $RUN/error ]]; then
        log "VM setup failed: $(<"$RUN/error")"
    elif grep -q 'Kernel panic' "$RUN/console.log" 2>/dev/null; then
        log "the VM crashed (kernel panic) before COMMAND finished"
    elif [[ -f $RUN/ready ]]; then
        log "the VM stopped before COMMAND finished (QEMU exit status $qemu_rc; VM crash?)"
    else
        log "the VM did not come up (QEMU exit status $qemu_rc)"
    fi
    show_console_tail
    return 125
}

main() {
    case ${1:-} in
        --) shift ;;
        -h | --help) usage; exit 0 ;;
        -*) usage >&2; exit 2 ;;
    esac
    (($# > 0)) || { usage >&2; exit 2; }

    if [[ ${SOFTROCE_VM:-} == 1 ]] || native_rdma_active; then
        exec "$@"
    fi

    REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
    CACHE=$REPO/.softroce
    CACHE_PREFIX=vm
    trap cleanup EXIT
    trap 'on_signal INT' INT
    trap 'on_signal TERM' TERM
    trap 'on_signal HUP' HUP

    ensure_packages
    ensure_cache
    local rc=0
    run_vm "$@" || rc=$?
    exit "$rc"
}

main "$@"
