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
# Modules loaded in each VM (with their dependencies, in modprobe's order). crc32_generic must precede rdma_rxe;
# virtio_net pulls failover and net_failover; sch_netem is for fault injection.
readonly MODULES=(virtio_pci virtio_net virtio_console 9pnet_virtio 9p overlay crc32_generic rdma_rxe ib_uverbs
    rdma_ucm sch_netem)
PROG=softroce-2host
# log, die, usage, squote (scripts/common.sh); the packages, the cache, both guest stages, the per-VM folder, QEMU.
. "$(dirname "${BASH_SOURCE[0]}")/softroce-lib.sh"

# ---------------------------------------------------------------------------------------------------------------
# The guest: stage 1 (the initramfs /init) is stage1_init, stage 2 stage2_script in scripts/softroce-lib.sh; here
# its hooks: the shared folder, eth0 (rxe0 is ready once GID 1 is the IPv4-mapped one), waiting for the "go" mark,
# and the fault agent beside COMMAND.
readonly RXE_NETDEV=eth0 RXE_GIDS=1 RXE_GIDS_NEEDED=1 RXE_GIDS_WHAT='an IPv4 GID at index 1'
stage2_mounts() {
    cat <<'EOF'
# The folder shared by both VMs.
mkdir -p "$N/run/softroce-2host" && mount -t 9p -o "$O9P,cache=none" shared "$N/run/softroce-2host" \
    || fail "mount of the shared folder (9p) failed"
EOF
}
stage2_network() {
    cat <<'EOF'
# Network: loopback; eth0 (the only NIC: the link to the other VM) with this host's address; rxe0 on eth0.
ip link set lo up || fail "ip link set lo up"
n=0
until [ -e /sys/class/net/eth0 ]; do
    n=$((n + 1)); [ $n -gt 100 ] && fail "no eth0 (virtio-net) appeared"
    sleep 0.1
done
ip addr add "$SVM_ADDR/24" dev eth0 || fail "ip addr add $SVM_ADDR/24 dev eth0"
ip link set eth0 up || fail "ip link set eth0 up"
EOF
}
stage2_start() {
    cat <<'EOF'

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
EOF
}
stage2_end() {
    echo 'kill $AGENT 2>/dev/null'
}
# The end of run.sh: COMMAND (args.sh: SVM_CMD) through /bin/sh -c.
run_command() {
    # shellcheck disable=SC2016  # guest text
    echo 'exec /bin/sh -c "$SVM_CMD"'
}

# Runs one fault command file ($1) like COMMAND: same environment and working directory.
fault_script() {
    cat <<'EOF'
. /run/softroce-vm/env.sh || exit 125
. /run/softroce-vm/args.sh || exit 125
unset SVM_CMD
cd "$SVM_CWD" || exit 125
unset SVM_CWD
exec /bin/sh "$1"
EOF
}

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
    remove_run_folder "${SOFTROCE_2HOST_KEEP:-0}"
}

# prepare_host A|B ADDR: the per-VM folder.
ENV_OWN=(SOFTROCE_2HOST_HOST SOFTROCE_2HOST_ADDR SOFTROCE_2HOST_PEER SOFTROCE_2HOST_SHARED)
prepare_host() {
    local h=$1 addr=$2 d=$RUN/$1 peer=$ADDR_A
    [[ $h == A ]] && peer=$ADDR_B
    mkdir -p "$d/faults"
    chmod 755 "$d" "$d/faults"
    vm_folder "$d" "SVM_ADDR=$addr" "SVM_NAME=host-${h,}"
    {
        printf 'export SOFTROCE_2HOST_HOST=%s\n' "$h"
        printf 'export SOFTROCE_2HOST_ADDR=%s\n' "$addr"
        printf 'export SOFTROCE_2HOST_PEER=%s\n' "$peer"
        printf 'export SOFTROCE_2HOST_SHARED=/run/softroce-2host\n'
    } >>"$d/env.sh"
    {
        printf 'SVM_CWD=%s\n' "$(squote "$PWD")"
        printf 'SVM_CMD=%s\n' "$(squote "${CMD[$h]}")"
    } >"$d/args.sh"
    fault_script >"$d/fault.sh"
}

# start_host A|B: launches the VM's QEMU and the prefixing relays of its output.
start_host() {
    local h=$1 d=$RUN/$1 mac server
    if [[ $h == A ]]; then mac=52:54:00:12:34:01 server=on; else mac=52:54:00:12:34:02 server=off; fi
    qemu_command "softroce-2host-$h" 1 "$MEM" "$d" \
        -netdev "stream,id=n0,server=$server,addr.type=unix,addr.path=$(qesc "$SOCK")" \
        -device "virtio-net-pci,netdev=n0,mac=$mac" \
        -virtfs "local,path=$(qesc "$RUN/shared"),mount_tag=shared,$QEMU_9P"
    "${QEMU_CMD[@]}" </dev/null >"$d/qemu.log" 2>&1 &
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
    report_vm_failure "$d" "host $h: "
    show_console_tail "$d" 30 "$h"
}

declare -A CMD=() STOPPED=() STATUS=() T_END=()
# stop_hosts WHY [MESSAGE]: stops the VMs still running (MESSAGE: logged for each, after "host H "); their status
# will be 124, and WHY the reason given.
stop_hosts() {
    local h
    for h in A B; do
        if [[ -n ${QEMU[$h]:-} ]]; then
            [[ -n ${2:-} ]] && log "host $h $2"
            STOPPED[$h]=$1
            kill_pid "${QEMU[$h]}"
            QEMU[$h]=''
            T_END[$h]=$(date +%s.%N)
        fi
    done
}
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
    set_tmpfs_tmp
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
        show_console_tail "$RUN/A" 30 A
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
            stop_hosts "stopped: timeout (SOFTROCE_2HOST_TIMEOUT=$timeout)"
            TIMED_OUT=1
            break
        elif [[ -n $FAULT_PID && $done_pid == "$FAULT_PID" ]]; then
            FAULT_PID=
            fault_rc=$rc
        elif [[ -n $GRACE_PID && $done_pid == "$GRACE_PID" ]]; then
            GRACE_PID=
            stop_hosts "stopped: still running $grace s after the other host failed" \
                "still running $grace s after the other host's command failed (SOFTROCE_2HOST_GRACE); stopping it"
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
            --a) (($# >= 2)) || bad_usage; CMD[A]=$2; have_a=1; shift 2 ;;
            --b) (($# >= 2)) || bad_usage; CMD[B]=$2; have_b=1; shift 2 ;;
            --faults) (($# >= 2)) || bad_usage; FAULTS=$2; shift 2 ;;
            --a=*) CMD[A]=${1#--a=}; have_a=1; shift ;;
            --b=*) CMD[B]=${1#--b=}; have_b=1; shift ;;
            --faults=*) FAULTS=${1#--faults=}; shift ;;
            -h | --help) usage; exit 0 ;;
            *) bad_usage "unknown argument: $1" ;;
        esac
    done
    ((have_a && have_b)) || bad_usage "both --a and --b are needed"

    ADDR_A=192.0.2.1 ADDR_B=192.0.2.2
    start_harness 2host 'the VMs'
    local rc=0
    run_hosts || rc=$?
    exit "$rc"
}

main "$@"
