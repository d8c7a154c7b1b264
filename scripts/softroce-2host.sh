#!/usr/bin/env bash
# softroce-2host.sh - run two commands on two SoftRoCE (rdma_rxe) hosts joined by a private emulated link.
#
# Usage:
#   scripts/softroce-2host.sh --a 'COMMAND A' --b 'COMMAND B' [--faults 'SCRIPT']
#
#   --a COMMAND     shell command line (run by /bin/sh -c) for host A, 192.0.2.1
#   --b COMMAND     shell command line for host B, 192.0.2.2
#   --faults SCRIPT bash script run on this machine once both commands have started, to inject faults (below)
#   -h, --help      this text
#
# Boots two QEMU VMs (TCG, 1 vCPU each, each with its own kernel - Debian's, with rdma_rxe - and initramfs, cached
# under <repo>/.softroce/ like scripts/softroce-vm.sh does). Each VM has exactly one NIC, eth0 (virtio-net); the two
# NICs are joined by QEMU's "stream" netdev over a Unix socket in a private per-run folder on this machine (A
# listens, B connects), so traffic never leaves the two VMs. Inside each VM: eth0 carries 192.0.2.1/24 (A) or
# 192.0.2.2/24 (B), rxe0 sits on eth0 (GID index 1 is the IPv4-mapped RoCEv2 GID; perftest needs "-x 1").
# As in softroce-vm.sh: the machine's root filesystem is visible read-only with a throw-away tmpfs overlay, the
# repository is mounted read-write at the same path (both VMs see the same repository), each VM has its own tmpfs
# /tmp, "ulimit -l unlimited", /dev/infiniband/*, and the environment carries the caller's PATH, HOME, TERM and
# LND_*, LNET_*, SWIFT_*, RDMA_*, SOFTROCE_* variables, plus SOFTROCE_VM=1 and
#   SOFTROCE_2HOST_HOST    A or B
#   SOFTROCE_2HOST_ADDR    this host's address (192.0.2.1 on A, 192.0.2.2 on B)
#   SOFTROCE_2HOST_PEER    the other host's address
#   SOFTROCE_2HOST_SHARED  /run/softroce-2host: a folder shared by both VMs (and this machine), for coordination,
#                          e.g. B does "touch $SOFTROCE_2HOST_SHARED/done" and A waits for that file (9p without
#                          caching: poll for files, do not rely on inotify).
# Both commands start at the same moment (each VM waits for the other to be ready), in the caller's working
# directory, as root, stdin /dev/null. Their stdout/stderr are streamed live to this script's stdout/stderr, each
# line prefixed "[A] " or "[B] " (lines, so a partial last line appears when it ends). Kernel console and QEMU
# logs stay in the per-run folder. Diagnostics and the final summary go to stderr, prefixed "softroce-2host:".
#
# Fault injection (--faults): SCRIPT is run by bash on this machine (not in a VM) as soon as both commands have
# started (time 0), in its own process group; its output is prefixed "[F] ". These functions are available:
#   on_a 'CMD'   run CMD (a /bin/sh command line, as root, in the caller's directory, with the command's
#   on_b 'CMD'   environment) on host A / B, while its main command runs; waits until CMD ends and returns its exit
#                status (125 if the VM is gone or CMD did not finish within SOFTROCE_2HOST_FAULT_TIMEOUT s).
#                CMD's output joins that host's [A]/[B] stream. To start something that keeps running (e.g. a
#                restarted server), background it inside CMD: on_a 'nohup prog >/tmp/p.log 2>&1 & echo $! >/tmp/p.pid'
#   sleep_s N    sleep N seconds (fractions allowed)
#   at_s T       sleep until T seconds after time 0
#   elapsed_s    print the seconds since time 0
# How it works: each VM runs an agent loop beside its main command that polls a "faults" folder of its per-run
# folder (shared with this machine over 9p) every 0.1 s and runs each command file dropped there, in order, in the
# same root, network and /tmp as the main command. Typical faults:
#   on_b 'tc qdisc add dev eth0 root netem loss 1%'              packet loss (also: delay 5ms, reorder, duplicate)
#   on_b 'tc qdisc change dev eth0 root netem loss 100%'         blackout, link left up ("tc qdisc del dev eth0 root"
#                                                                ends it); rxe retransmits, QPs survive
#   on_a 'ip link set eth0 down'; sleep_s 2; on_a 'ip link set eth0 up'   link down: rxe fails the QPs at once
#   on_b 'kill -9 "$(cat /tmp/serve.pid)"'                       kill a process whose PID the main command wrote
# A fault command takes 0.3-1.5 s under emulation (polling, /bin/sh and the tool starting in the VM): on_a returns
# when it has taken effect; for exact timing, compare "+N s" marks ([F] lines) with the command's own timestamps.
# A fault script that returns non-zero fails the run; one still running when both commands have ended is stopped
# (that is not a failure).
#
# Examples:
#   scripts/softroce-2host.sh --a 'ib_read_bw -x 1 -d rxe0 -s 1048576 -n 200' \
#       --b 'sleep 2; ib_read_bw -x 1 -d rxe0 -s 1048576 -n 200 192.0.2.1' \
#       --faults 'at_s 5; on_b "tc qdisc add dev eth0 root netem loss 1%"'
#   # A server that B stops through the shared folder; B waits for the server's ready file there:
#   scripts/softroce-2host.sh \
#       --a '.build/release/lnetctl serve --nid 192.0.2.1@o2ib --ready-file $SOFTROCE_2HOST_SHARED/serve.pid & p=$!
#            until [ -e $SOFTROCE_2HOST_SHARED/done ]; do sleep 0.5; done; kill -TERM $p; wait $p' \
#       --b 'until [ -s $SOFTROCE_2HOST_SHARED/serve.pid ]; do sleep 0.5; done
#            .build/release/lnetctl selftest --nid 192.0.2.2@o2ib --to 192.0.2.1@o2ib --op read --size 1MiB --json
#            rc=$?; touch $SOFTROCE_2HOST_SHARED/done; exit $rc'
#
# The per-run folder (TMPDIR or /tmp, softroce-2host.XXXXXX; kept with SOFTROCE_2HOST_KEEP=1) holds link.sock,
# shared/ (= SOFTROCE_2HOST_SHARED) and, per host, A/ and B/: stdout, stderr (the command's raw output), console.log
# (kernel console with boot marks), qemu.log, faults/ (TIME-PID.sh and TIME-PID.status per on_a/on_b), status.
#
# Environment:
#   SOFTROCE_2HOST_TIMEOUT        wall-clock limit for the whole run in seconds (default 900); QEMUs are killed then
#   SOFTROCE_2HOST_GRACE          once one command has failed, seconds the other may still run (default 30; 0: no
#                                 limit); then its VM is stopped (status 124 for it)
#   SOFTROCE_2HOST_FAULT_TIMEOUT  seconds on_a/on_b wait for their command (default 60)
#   SOFTROCE_2HOST_MEM            guest memory per VM in MiB (default 2048)
#   SOFTROCE_2HOST_RXE_TIMEOUT    seconds to wait for rxe0 ACTIVE in each VM (default 60)
#   SOFTROCE_2HOST_KEEP           1: keep the per-run folder (console logs, output files, fault files) and print it
#   SOFTROCE_VM_KERNEL            kernel version to use (as in softroce-vm.sh)
#   SOFTROCE_VM_CPU, SOFTROCE_VM_CLOCK  the guests' CPU model and clock source (as in softroce-vm.sh)
#
# Exit status: 0 if both commands exited 0 (and the fault script, if it finished, too); otherwise 124 if the run
# timed out, 125 if the harness failed (a VM did not boot, rxe0 did not come up, ...), else 1. Each host's status
# is reported in the summary line on stderr ("softroce-2host: A: exit 0 ...; B: exit 0 ...").
# Unlike softroce-vm.sh, this always boots VMs, even where a native RDMA device exists. Each VM has one vCPU
# (as measured on this test bed: 1 MiB ib_read_bw 58-60 MB/s on a quiet 2-core machine; much less
# when the machine is busy). Inside, softroce-vm.sh simply execs its command (SOFTROCE_VM=1).
set -euo pipefail
shopt -s nullglob

readonly RECIPE_VERSION=1
readonly PACKAGES=(qemu-system-x86 busybox-static kmod cpio iproute2 rdma-core ibverbs-providers ibverbs-utils
    rdmacm-utils perftest libibverbs-dev librdmacm-dev)
# Modules loaded in each VM (with their dependencies, in modprobe's order). crc32_generic must precede rdma_rxe;
# virtio_net pulls failover and net_failover; sch_netem is for fault injection.
readonly MODULES=(virtio_pci virtio_net virtio_console 9pnet_virtio 9p overlay crc32_generic rdma_rxe ib_uverbs
    rdma_ucm sch_netem)

log() { printf 'softroce-2host: %s\n' "$*" >&2; }
die() { log "$*"; exit 125; }

usage() {
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
}

# Single-quote a string for POSIX sh.
squote() { printf "'%s'" "${1//\'/\'\\\'\'}"; }

# ---------------------------------------------------------------------------------------------------------------
# Guest stage 1 (the initramfs /init): stage1_init in scripts/softroce-lib.sh.

# Guest stage 2: sourced by stage 1 (busybox sh, PID 1); written per run, not cached. Sets up the host root at
# /newroot, eth0 and rxe0, waits for the "go" mark, then runs COMMAND (run.sh) and the fault agent through chroot
# and powers off.
stage2_script() {
    cat <<'EOF2'
# softroce-2host stage 2
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
    echo "softroce-2host: $*"
    [ -n "$ERRFD" ] && echo "softroce-2host: $*" >&8
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
    echo "softroce-2host: $1 not found in the host root"
    return 127
}
. "$R/vm.sh" || fail "cannot read $R/vm.sh"

# The repository, read-write; the folder shared by both VMs; the usual file systems.
mkdir -p "$N$SVM_REPO" && mount -t 9p -o "$O9P,cache=mmap" repo "$N$SVM_REPO" \
    || fail "mount of the repository (9p) failed"
mkdir -p "$N/run/softroce-2host" && mount -t 9p -o "$O9P,cache=none" shared "$N/run/softroce-2host" \
    || fail "mount of the shared folder (9p) failed"
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
hostname "$SVM_NAME"

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

# Network: loopback; eth0 (the only NIC: the link to the other VM) with this host's address; rxe0 on eth0.
ip link set lo up || fail "ip link set lo up"
n=0
until [ -e /sys/class/net/eth0 ]; do
    n=$((n + 1)); [ $n -gt 100 ] && fail "no eth0 (virtio-net) appeared"
    sleep 0.1
done
ip addr add "$SVM_ADDR/24" dev eth0 || fail "ip addr add $SVM_ADDR/24 dev eth0"
ip link set eth0 up || fail "ip link set eth0 up"
host rdma link add rxe0 type rxe netdev eth0 || fail "rdma link add rxe0 type rxe netdev eth0 failed"
P=/sys/class/infiniband/rxe0/ports/1
n=0
while :; do
    g=''
    read -r g <"$P/gids/1" 2>/dev/null
    st=''
    read -r st <"$P/state" 2>/dev/null
    case $st in *ACTIVE*)
        case $g in 0000:0000:0000:0000:0000:ffff:*)
            [ -c /dev/infiniband/uverbs0 ] && [ -c /dev/infiniband/rdma_cm ] && break ;;
        esac ;;
    esac
    n=$((n + 1))
    [ $n -gt $((SVM_RXE_TIMEOUT * 10)) ] &&
        fail "rxe0 port 1 not ACTIVE with an IPv4 GID at index 1 after $SVM_RXE_TIMEOUT s (state: $st, GID 1: $g)"
    sleep 0.1
done
mark "rxe0 active"
cat /proc/uptime >"$R/ready"

# COMMAND writes into FIFOs relayed by cat to the ports, so that it may reopen /dev/stdout or /dev/stderr
# (a virtio-serial port can be open only once); the fault agent writes there too.
mkdir -p /dev/softroce-vm && mkfifo /dev/softroce-vm/out /dev/softroce-vm/err || fail "mkfifo"
cat /dev/softroce-vm/out >&7 8>&- &
RO=$!
cat /dev/softroce-vm/err >&8 7>&- &
RE=$!

# Both VMs start their commands when the host says "go" (once both are ready).
until [ -e "$R/go" ]; do sleep 0.05; done
mark "go"

# The fault agent: runs the command files that the host drops into $R/faults, in name order, one at a time.
agent() {
    while :; do
        for f in "$R"/faults/*.sh; do
            [ -f "$f" ] || continue
            b=${f%.sh}
            [ -e "$b.status" ] && continue
            env -i /bin/chroot "$N" /bin/sh /run/softroce-vm/fault.sh "/run/softroce-vm/faults/${f##*/}" </dev/null
            echo $? >"$b.status.tmp" && mv "$b.status.tmp" "$b.status"
        done
        sleep 0.1
    done
}
agent >/dev/softroce-vm/out 2>/dev/softroce-vm/err 7>&- 8>&- &
AGENT=$!
# (In the background, so that the shell reports no "Killed" when COMMAND dies of a signal.)
env -i /bin/chroot "$N" /bin/sh /run/softroce-vm/run.sh >/dev/softroce-vm/out 2>/dev/softroce-vm/err 7>&- 8>&- &
wait $!
status=$?
mark "command exited with status $status"
kill $AGENT 2>/dev/null
# Background processes that COMMAND or a fault left behind may still hold the FIFOs: give the relays 2 s to drain.
(sleep 2; kill $RO $RE 2>/dev/null) 7>&- 8>&- &
W=$!
wait $RO $RE
kill $W 2>/dev/null
[ -f "$R/error" ] && fail "$(cat "$R/error")"
sync
echo "$status" >"$R/status.tmp" && mv "$R/status.tmp" "$R/status"
finish
EOF2
}

# Run by the host's /bin/sh in the host root (chroot), with an empty environment: the caller's environment, the
# caller's working directory, then COMMAND through /bin/sh -c.
run_script() {
    cat <<'EOF2'
. /run/softroce-vm/env.sh || exit 125
. /run/softroce-vm/args.sh || exit 125
if ! cd "$SVM_CWD"; then
    echo "cannot change to $SVM_CWD inside the VM" >/run/softroce-vm/error
    exit 125
fi
unset SVM_CWD
exec /bin/sh -c "$SVM_CMD"
EOF2
}

# Runs one fault command file ($1) like COMMAND: same environment and working directory.
fault_script() {
    cat <<'EOF2'
. /run/softroce-vm/env.sh || exit 125
. /run/softroce-vm/args.sh || exit 125
unset SVM_CMD
cd "$SVM_CWD" || exit 125
unset SVM_CWD
exec /bin/sh "$1"
EOF2
}
# ---------------------------------------------------------------------------------------------------------------
# Host side.

. "$(dirname "${BASH_SOURCE[0]}")/softroce-lib.sh"

# ---------------------------------------------------------------------------------------------------------------
# Fault-script helpers: exported into the --faults script's bash. They use F_RUN (the per-run folder), F_T0 (time
# 0, seconds since the epoch), F_QEMU_A/F_QEMU_B (the QEMU PIDs) and F_WAIT (SOFTROCE_2HOST_FAULT_TIMEOUT).
# shellcheck disable=SC2317  # exported to the fault script
elapsed_s() { awk -v t0="$F_T0" -v t="$(date +%s.%N)" 'BEGIN { printf "%.2f\n", t - t0 }'; }
# shellcheck disable=SC2317
sleep_s() { sleep "$1"; }
# shellcheck disable=SC2317
at_s() {
    local d
    d=$(awk -v t0="$F_T0" -v at="$1" -v t="$(date +%s.%N)" 'BEGIN { d = t0 + at - t; printf "%.3f", (d > 0 ? d : 0) }')
    sleep "$d"
}
# shellcheck disable=SC2317
on_host() {   # on_host A|B CMD
    local h=$1 cmd=$2 dir pid id i rc
    dir=$F_RUN/$h/faults
    if [[ $h == A ]]; then pid=$F_QEMU_A; else pid=$F_QEMU_B; fi
    id=$(date +%s%N)-$BASHPID
    printf '%s\n' "$cmd" >"$dir/.$id.tmp"
    mv "$dir/.$id.tmp" "$dir/$id.sh"
    echo "+$(elapsed_s) s on_${h,}: $cmd"
    for ((i = 0; i < F_WAIT * 10; i++)); do
        if [[ -f $dir/$id.status ]]; then
            rc=$(<"$dir/$id.status")
            echo "+$(elapsed_s) s on_${h,}: exit $rc"
            return "$rc"
        fi
        kill -0 "$pid" 2>/dev/null || { echo "on_${h,}: host $h is gone"; return 125; }
        sleep 0.1
    done
    echo "on_${h,}: no result after $F_WAIT s"
    return 125
}
# shellcheck disable=SC2317
on_a() { on_host A "$1"; }
# shellcheck disable=SC2317
on_b() { on_host B "$1"; }

# ---------------------------------------------------------------------------------------------------------------
# Host side: running the two VMs.

RUN='' TIMER_PID='' FAULT_PID='' GRACE_PID=''
declare -A QEMU=() TAILS=()
# shellcheck disable=SC2317  # invoked from traps
cleanup() {
    local pid
    if [[ -n $FAULT_PID ]]; then   # its process group (see run_hosts), then the process
        { kill -KILL -- "-$FAULT_PID" && wait "$FAULT_PID"; } 2>/dev/null || true
        kill_pid "$FAULT_PID"
    fi
    for pid in "${QEMU[@]}" "$TIMER_PID" "$GRACE_PID" "${TAILS[@]}"; do
        kill_pid "$pid"
    done
    QEMU=() TAILS=() TIMER_PID='' FAULT_PID='' GRACE_PID=''
    if [[ -n $RUN ]]; then
        if [[ ${SOFTROCE_2HOST_KEEP:-0} == 1 ]]; then
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
    log "interrupted ($1); stopping the VMs"
    cleanup
    case $1 in INT) exit 130 ;; HUP) exit 129 ;; *) exit 143 ;; esac
}

show_console_tail() {   # show_console_tail A|B
    local d=$RUN/$1
    if [[ -s $d/console.log ]]; then
        log "last lines of host $1's console:"
        tail -n 30 "$d/console.log" | tr -d '\r' | sed "s/^/softroce-2host: $1| /" >&2
    fi
    if [[ -s $d/qemu.log ]]; then
        log "host $1's QEMU said:"
        tail -n 20 "$d/qemu.log" | sed "s/^/softroce-2host: $1| /" >&2
    fi
}

# prepare_host A|B ADDR: the per-VM folder.
prepare_host() {
    local h=$1 addr=$2 d=$RUN/$1 name
    mkdir -p "$d/faults"
    chmod 755 "$d" "$d/faults"
    {
        printf 'SVM_REPO=%s\n' "$(squote "$REPO")"
        printf 'SVM_TMPFS_TMP=%s\n' "$TMPFS_TMP"
        printf 'SVM_RXE_TIMEOUT=%s\n' "$RXE_TIMEOUT"
        printf 'SVM_NOFILE=%s\n' "$(ulimit -n)"
        printf 'SVM_ADDR=%s\n' "$addr"
        printf 'SVM_NAME=host-%s\n' "${h,}"
    } >"$d/vm.sh"
    {
        printf 'SVM_CWD=%s\n' "$(squote "$PWD")"
        printf 'SVM_CMD=%s\n' "$(squote "${CMD[$h]}")"
    } >"$d/args.sh"
    {
        for name in PATH HOME TERM; do
            [[ -v $name ]] && printf 'export %s=%s\n' "$name" "$(squote "${!name}")"
        done
        while IFS= read -r name; do
            case $name in
                SOFTROCE_2HOST_HOST | SOFTROCE_2HOST_ADDR | SOFTROCE_2HOST_PEER | SOFTROCE_2HOST_SHARED) ;;
                LND_* | LNET_* | SWIFT_* | RDMA_* | SOFTROCE_*)
                    printf 'export %s=%s\n' "$name" "$(squote "${!name}")" ;;
            esac
        done < <(compgen -e)
        printf 'export SOFTROCE_VM=1\n'
        printf 'export SOFTROCE_2HOST_HOST=%s\n' "$h"
        printf 'export SOFTROCE_2HOST_ADDR=%s\n' "$addr"
        if [[ $h == A ]]; then
            printf 'export SOFTROCE_2HOST_PEER=%s\n' "$ADDR_B"
        else
            printf 'export SOFTROCE_2HOST_PEER=%s\n' "$ADDR_A"
        fi
        printf 'export SOFTROCE_2HOST_SHARED=/run/softroce-2host\n'
    } >"$d/env.sh"
    stage2_script >"$d/stage2.sh"
    run_script >"$d/run.sh"
    fault_script >"$d/fault.sh"
    : >"$d/stdout"
    : >"$d/stderr"
    : >"$d/console.log"
}

# start_host A|B: launches the VM's QEMU and the prefixing relays of its output.
start_host() {
    local h=$1 d=$RUN/$1 mac server
    local r9=security_model=none,multidevs=remap
    if [[ $h == A ]]; then mac=52:54:00:12:34:01 server=on; else mac=52:54:00:12:34:02 server=off; fi
    local qemu=(qemu-system-x86_64 -name "softroce-2host-$h" -accel tcg -cpu "$(guest_cpu)" -machine pc -smp 1 -m "$MEM"
        -nodefaults -no-user-config -display none -no-reboot -monitor none
        -serial "file:$(qesc "$d/console.log")"
        -kernel "$(qesc "$KERNEL_IMAGE")" -initrd "$(qesc "$INITRD")"
        -append "$(guest_append)"
        -netdev "stream,id=n0,server=$server,addr.type=unix,addr.path=$(qesc "$SOCK")"
        -device "virtio-net-pci,netdev=n0,mac=$mac"
        -virtfs "local,path=/,mount_tag=hostroot,readonly=on,$r9"
        -virtfs "local,path=$(qesc "$REPO"),mount_tag=repo,$r9"
        -virtfs "local,path=$(qesc "$d"),mount_tag=svmrun,$r9"
        -virtfs "local,path=$(qesc "$RUN/shared"),mount_tag=shared,$r9"
        -device "virtio-serial-pci,id=vser"
        -chardev "file,id=svmout,append=on,path=$(qesc "$d/stdout")"
        -device "virtserialport,bus=vser.0,chardev=svmout,name=softroce.stdout"
        -chardev "file,id=svmerr,append=on,path=$(qesc "$d/stderr")"
        -device "virtserialport,bus=vser.0,chardev=svmerr,name=softroce.stderr")
    "${qemu[@]}" </dev/null >"$d/qemu.log" 2>&1 &
    QEMU[$h]=$!
    # The relays end on their own once QEMU is gone, after a last read.
    tail -n +1 -s 0.2 --pid="${QEMU[$h]}" -f "$d/stdout" | sed -u "s/^/[$h] /" &
    TAILS[${h}out]=$!
    tail -n +1 -s 0.2 --pid="${QEMU[$h]}" -f "$d/stderr" | sed -u "s/^/[$h] /" >&2 &
    TAILS[${h}err]=$!
}

# host_status A|B: the exit status to report for a host whose VM has ended.
host_status() {
    local h=$1 d=$RUN/$1 s
    if [[ -n ${STOPPED[$h]:-} ]]; then
        echo 124
    elif [[ -f $d/status ]]; then
        s=$(<"$d/status")
        if [[ $s =~ ^[0-9]+$ ]]; then echo "$s"; else echo 125; fi
    else
        echo 125
    fi
}

# describe_failure A|B: why a host has no status.
describe_failure() {
    local h=$1 d=$RUN/$1
    if [[ -n ${STOPPED[$h]:-} ]]; then
        log "host $h: ${STOPPED[$h]}"
        return
    fi
    [[ -f $d/status ]] && return
    if [[ -f $d/error ]]; then
        log "host $h: VM setup failed: $(<"$d/error")"
    elif grep -q 'Kernel panic' "$d/console.log" 2>/dev/null; then
        log "host $h: the VM crashed (kernel panic) before COMMAND finished"
    elif [[ -f $d/ready ]]; then
        log "host $h: the VM stopped before COMMAND finished (VM crash?)"
    else
        log "host $h: the VM did not come up"
    fi
    show_console_tail "$h"
}

declare -A CMD=() STOPPED=() STATUS=() T_END=()
run_hosts() {
    local timeout=${SOFTROCE_2HOST_TIMEOUT:-900} grace=${SOFTROCE_2HOST_GRACE:-30}
    local fwait=${SOFTROCE_2HOST_FAULT_TIMEOUT:-60}
    MEM=${SOFTROCE_2HOST_MEM:-2048} RXE_TIMEOUT=${SOFTROCE_2HOST_RXE_TIMEOUT:-60}
    [[ $timeout =~ ^[0-9]+$ && $timeout -gt 0 ]] || die "SOFTROCE_2HOST_TIMEOUT must be a positive number of seconds"
    [[ $grace =~ ^[0-9]+$ ]] || die "SOFTROCE_2HOST_GRACE must be a number of seconds"
    [[ $fwait =~ ^[0-9]+$ && $fwait -gt 0 ]] || die "SOFTROCE_2HOST_FAULT_TIMEOUT must be a positive number"
    [[ $MEM =~ ^[0-9]+$ ]] || die "SOFTROCE_2HOST_MEM must be a number (MiB)"
    [[ $RXE_TIMEOUT =~ ^[0-9]+$ ]] || die "SOFTROCE_2HOST_RXE_TIMEOUT must be a number of seconds"
    command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 not found"

    RUN=$(mktemp -d "${TMPDIR:-/tmp}/softroce-2host.XXXXXX")
    chmod 755 "$RUN"
    mkdir -p "$RUN/shared"
    chmod 1777 "$RUN/shared"
    SOCK=$RUN/link.sock
    ((${#SOCK} < 100)) || die "socket path too long: $SOCK (set TMPDIR to a shorter folder)"
    TMPFS_TMP=1
    [[ $REPO == /tmp || $REPO == /tmp/* || $PWD == /tmp || $PWD == /tmp/* ]] && TMPFS_TMP=0
    prepare_host A "$ADDR_A"
    prepare_host B "$ADDR_B"

    local t0 tgo='' t1 i
    t0=$(date +%s.%N)
    sleep "$timeout" &
    TIMER_PID=$!
    start_host A
    # B connects to A's socket: only once it exists (QEMU 7.2 does not retry).
    for ((i = 0; i < 300; i++)); do
        [[ -S $SOCK ]] && break
        kill -0 "${QEMU[A]}" 2>/dev/null || break
        sleep 0.1
    done
    if [[ ! -S $SOCK ]]; then
        log "host A's QEMU did not create the link socket"
        show_console_tail A
        return 125
    fi
    start_host B

    # Wait for both VMs to be ready, then say go (both) and start the fault script.
    local h ready
    while :; do
        ready=0
        for h in A B; do
            [[ -f $RUN/$h/ready ]] && ready=$((ready + 1))
        done
        ((ready == 2)) && break
        for h in A B; do
            kill -0 "${QEMU[$h]}" 2>/dev/null || break 2
        done
        kill -0 "$TIMER_PID" 2>/dev/null || break
        sleep 0.1
    done
    if ((ready == 2)); then
        : >"$RUN/A/go"
        : >"$RUN/B/go"
        tgo=$(date +%s.%N)
        log "both hosts ready $(awk -v a="$t0" -v b="$tgo" 'BEGIN { printf "%.1f", b - a }') s after launch; commands started"
        if [[ -n $FAULTS ]]; then
            F_RUN=$RUN F_T0=$tgo F_QEMU_A=${QEMU[A]} F_QEMU_B=${QEMU[B]} F_WAIT=$fwait
            export F_RUN F_T0 F_QEMU_A F_QEMU_B F_WAIT
            export -f elapsed_s sleep_s at_s on_host on_a on_b
            # Its own process group (setsid execs in place: the PID is the group's ID), so that it can be stopped
            # with all its children.
            setsid -w bash -c "$FAULTS" </dev/null > >(sed -u 's/^/[F] /') 2> >(sed -u 's/^/[F] /' >&2) &
            FAULT_PID=$!
        fi
    fi

    # Wait for both VMs to end (or the timeout); the fault script may end before.
    local done_pid rc running fault_rc=''
    local -a pids
    while :; do
        pids=("$TIMER_PID")
        running=0
        for h in A B; do
            [[ -n ${QEMU[$h]:-} ]] && { pids+=("${QEMU[$h]}"); running=$((running + 1)); }
        done
        ((running == 0)) && break
        [[ -n $FAULT_PID ]] && pids+=("$FAULT_PID")
        [[ -n $GRACE_PID ]] && pids+=("$GRACE_PID")
        done_pid='' rc=0
        wait -n -p done_pid "${pids[@]}" || rc=$?
        if [[ $done_pid == "$TIMER_PID" ]]; then
            TIMER_PID=
            log "timed out after $timeout s (SOFTROCE_2HOST_TIMEOUT); stopping the VMs"
            for h in A B; do
                if [[ -n ${QEMU[$h]:-} ]]; then
                    STOPPED[$h]="stopped: timeout (SOFTROCE_2HOST_TIMEOUT=$timeout)"
                    kill_pid "${QEMU[$h]}"
                    QEMU[$h]=''
                    T_END[$h]=$(date +%s.%N)
                fi
            done
            TIMED_OUT=1
            break
        elif [[ -n $FAULT_PID && $done_pid == "$FAULT_PID" ]]; then
            FAULT_PID=
            fault_rc=$rc
        elif [[ -n $GRACE_PID && $done_pid == "$GRACE_PID" ]]; then
            GRACE_PID=
            for h in A B; do
                if [[ -n ${QEMU[$h]:-} ]]; then
                    log "host $h still running $grace s after the other host's command failed (SOFTROCE_2HOST_GRACE); stopping it"
                    STOPPED[$h]="stopped: still running $grace s after the other host failed"
                    kill_pid "${QEMU[$h]}"
                    QEMU[$h]=''
                    T_END[$h]=$(date +%s.%N)
                fi
            done
        else
            for h in A B; do
                if [[ -n ${QEMU[$h]:-} && $done_pid == "${QEMU[$h]}" ]]; then
                    QEMU[$h]=''
                    T_END[$h]=$(date +%s.%N)
                    if [[ $(host_status "$h") != 0 && $grace -gt 0 && -z $GRACE_PID ]]; then
                        sleep "$grace" &
                        GRACE_PID=$!
                    fi
                fi
            done
        fi
    done
    kill_pid "$TIMER_PID"; TIMER_PID=
    kill_pid "$GRACE_PID"; GRACE_PID=
    if [[ -n $FAULT_PID ]]; then
        log "the fault script was still running when both hosts had ended; stopped"
        kill -TERM -- "-$FAULT_PID" 2>/dev/null || true
        sleep 0.2
        kill -KILL -- "-$FAULT_PID" 2>/dev/null || true
        wait "$FAULT_PID" 2>/dev/null || true
        FAULT_PID=
    fi
    for h in "${!TAILS[@]}"; do
        wait "${TAILS[$h]}" 2>/dev/null || true
    done
    TAILS=()
    t1=$(date +%s.%N)

    # Summary.
    local summary='' s dur
    for h in A B; do
        describe_failure "$h"
        s=$(host_status "$h")
        STATUS[$h]=$s
        if [[ -n $tgo ]]; then
            dur=$(awk -v a="$tgo" -v b="${T_END[$h]:-$t1}" 'BEGIN { printf "%.1f", b - a }')
            summary+="$h: exit $s (ran $dur s incl. power-off); "
        else
            summary+="$h: exit $s; "
        fi
    done
    if [[ -n $FAULTS ]]; then
        if [[ -n $fault_rc ]]; then
            summary+="faults: exit $fault_rc; "
        elif [[ -n $tgo ]]; then
            summary+="faults: stopped before the end; "
        else
            summary+="faults: not run; "
        fi
    fi
    summary+="total $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }') s"
    log "$summary"

    ((TIMED_OUT)) && return 124
    if [[ ${STATUS[A]} == 0 && ${STATUS[B]} == 0 && ${fault_rc:-0} == 0 ]]; then
        return 0
    fi
    [[ ${STATUS[A]} == 125 || ${STATUS[B]} == 125 ]] && [[ -z ${STOPPED[A]:-}${STOPPED[B]:-} ]] && return 125
    return 1
}

main() {
    FAULTS='' TIMED_OUT=0
    local have_a=0 have_b=0
    while (($# > 0)); do
        case $1 in
            --a) (($# >= 2)) || { usage >&2; exit 2; }; CMD[A]=$2; have_a=1; shift 2 ;;
            --b) (($# >= 2)) || { usage >&2; exit 2; }; CMD[B]=$2; have_b=1; shift 2 ;;
            --faults) (($# >= 2)) || { usage >&2; exit 2; }; FAULTS=$2; shift 2 ;;
            --a=*) CMD[A]=${1#--a=}; have_a=1; shift ;;
            --b=*) CMD[B]=${1#--b=}; have_b=1; shift ;;
            --faults=*) FAULTS=${1#--faults=}; shift ;;
            -h | --help) usage; exit 0 ;;
            *) log "unknown argument: $1"; usage >&2; exit 2 ;;
        esac
    done
    ((have_a && have_b)) || { log "both --a and --b are needed"; usage >&2; exit 2; }

    REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
    CACHE=$REPO/.softroce
    CACHE_PREFIX=2host
    ADDR_A=192.0.2.1 ADDR_B=192.0.2.2
    trap cleanup EXIT
    trap 'on_signal INT' INT
    trap 'on_signal TERM' TERM
    trap 'on_signal HUP' HUP

    ensure_packages
    ensure_cache
    local rc=0
    run_hosts || rc=$?
    exit "$rc"
}

main "$@"
