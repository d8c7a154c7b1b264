#!/usr/bin/env bash
# fault-suite.sh - the two-host fault suite: verified self-test traffic between two SoftRoCE VMs while faults hit
# the link or the server, checking that every message is finalized exactly once and nothing is lost.
#
# Usage:
#   scripts/fault-suite.sh [CASE...]      (default: every case, in this order)
#
# Cases (host A = 192.0.2.1 runs the client, host B = 192.0.2.2 the server; see scripts/softroce-2host.sh):
#   netem-read-pull, netem-read-push, netem-write-pull, netem-write-push
#                 1% loss and 5 ms +/- 2 ms delay with reordering (netem "loss 1% delay 5ms 2ms reorder 25% 50%")
#                 on both hosts' links (both directions), from 2 s into a 10 s session (once it is set up:
#                 address resolution itself can time out under the fault) of bulk GETs (reads) or PUTs (writes) in
#                 each bulk mode; operations may fail with an error (rxe's go-back-N retransmission collapses under
#                 reordering, see below) but none may be lost or unverified; then the fault is removed and a second
#                 session in the same client process must succeed entirely
#   blackout      100% loss for 2 s (link up) during bulk writes, QP retries 7: traffic resumes, every operation succeeds
#   link-down     A's link down for 2 s during bulk reads: rxe fails the QP, pending operations fail with an error
#                 (not the self-test's own timeout), the connection is rebuilt, and a second session in the same
#                 client process succeeds entirely
#   server-kill   the server killed (SIGKILL) during bulk reads, then restarted (a new incarnation): the client's
#                 pending operations fail with an error, nothing hangs; a second session in the same client process
#                 reconnects and succeeds entirely
#   race          both hosts start a self-test against each other at the same moment (3 times): each side ends
#                 with exactly one connection to the other, and both sessions succeed
#   flaps         A's link flaps 5 times (down 1 s, up 2 s) during verified 1 MiB reads (pull): operations fail with
#                 an error, the client reconnects with back-off (at most MAX_ATTEMPTS_PER_FLAP connection attempts
#                 per flap over its whole life and MAX_FAILED_ATTEMPTS_PER_SECOND failed ones in any second of its
#                 log, where the old loop made ~100 in a few seconds) and its second
#                 session, after the flaps, succeeds entirely; then A's rdma_cm must still work for others: a NEW
#                 lnetctl process from A (a verified self-test against the same server) succeeds entirely, and
#                 an rdma_cm probe (rping, server on B, client on A: one connection, verified pings moved by SEND,
#                 RDMA READ and RDMA WRITE) connects and finishes. Saves
#                 both hosts' QPs (rdma res show qp: A's GSI QP, QP1, carries rdma_cm's MADs) before and after the
#                 flaps and both kernels' logs
#   cm-probe      (diagnostic, not in the default list) can rdma_cm still connect A -> B (rping)?
#                 Also saves both kernels' logs
#
# Every case checks (scripts/fault-summary.py judges, scripts/judges-test.py tests the judge): each lnetctl process
# the case did not kill exited by itself with the status the case expects (no hang, no crash, no SIGKILL from
# outside - also not after printing its JSON); the LNet accounting of every process that was not killed adds up
# (every message handed to the LND finalized exactly once, none pending, none finalized twice); attempted =
# succeeded + failed in every round and every process ("lost" = any difference + messages not finalized = 0,
# nothing clamped); every successful operation was verified byte for byte (reads by the client, writes by the
# server); and the fault took effect, shown by both hosts' rxe counters (sysfs hw_counters, saved before and after
# each case and, in the same command as the fault, right before and after it: CASE.fault-on / CASE.fault-off) or
# by the LND's counters: netem and blackout made rxe resend (retries, out-of-sequence packets, sequence NAKs,
# duplicates), the link down took A's port down (every one of the flaps too: link_downed moved 5 times), the race
# made B reject A's request.
# Results: results/fault-suite.txt (the table with the evidence, also printed) and results/fault-suite.json; the
# raw JSON, stderr and exit status of every process and the rxe counters under results/fault-suite/. Exit status 0
# when every case passed.
#
# rxe and reordering: on these machines perftest itself (ib_read_bw/ib_write_bw -s 262144 -n 200 across the two
# VMs) did not finish within 90 s under that netem setting; every reordered packet makes rxe's responder NAK and
# the requester resend from there, and each such NAK uses up one of the QP's retries (LND_RETRY_COUNT, 5): a
# pushed (RDMA WRITE) transfer then fails with "transport retry counter exceeded". So under netem the suite
# expects failures with errors, not throughput.
#
# Uses the debug build of lnetctl (.build/debug/lnetctl; FAULT_SUITE_BIN=DIR for another) - build it first
# (scripts/test.sh does). Environment: FAULT_SUITE_DURATION (seconds of traffic per case, default 10),
# FAULT_SUITE_SIZE (bytes per bulk operation, default 256KiB), FAULT_SUITE_CONCURRENCY (default 4), LND_TIMEOUT
# (default here 10 s), FAULT_SUITE_NETEM (the netem arguments), FAULT_SUITE_NETEM_SIZE (bytes per operation under
# netem, default 64KiB), FAULT_SUITE_FLAPS_DURATION (seconds of each of the flaps case's two rounds, default 20:
# the first covers the flaps), LNET_LOG_LEVEL (e.g. info: more in the .err files), and anything softroce-2host.sh takes (SOFTROCE_2HOST_*).
set -euo pipefail
# log, die, wait_ready
. "$(dirname "$0")/common.sh"
DIE_STATUS=2

ALL_CASES=(netem-read-pull netem-read-push netem-write-pull netem-write-push blackout link-down server-kill race flaps)

# ---------------------------------------------------------------------------------------------------------------
# The orchestrator: runs on this machine as softroce-2host.sh's fault script (on_a/on_b, F_RUN are given).
if [[ ${1:-} == --orchestrate ]]; then
    shift
    SH=$F_RUN/shared                # the shared folder, as this machine sees it
    VSH=/run/softroce-2host         # ... and as the VMs see it
    BIN=$FS_BIN
    DUR=$FS_DURATION
    trap ': >"$SH/finished"' EXIT
    failures=0
    note() { echo "+$(elapsed_s) s $*"; }

    wait_file() {   # wait_file PATH SECONDS [RC]: until PATH exists; fails at once if the process of RC ended
        local up=0
        if [[ -n ${3:-} ]]; then
            wait_ready "$1" "$2" test ! -e "$3" || up=$?
        else
            wait_ready "$1" "$2" true || up=$?
        fi
        case $up in
            0) return 0 ;;
            1) note "${3#"$SH"/} exists (the process ended) before ${1#"$SH"/}" ;;
            *) note "timed out after $2 s waiting for ${1#"$SH"/}" ;;
        esac
        return 1
    }
    # A script in the shared folder that runs one lnetctl command in the background on a host, recording its
    # PID (in the VM's /tmp/NAME.pid.fs, removed when it ends) and exit status (shared NAME.rc); output to shared NAME.json / NAME.err.
    launch() {   # launch A|B NAME ENV... -- ARGS...
        local host=$1 name=$2 envs=() a
        shift 2
        while [[ $1 != -- ]]; do envs+=("$1"); shift; done
        shift
        rm -f "$SH/$name".{json,err,rc,ready}
        {
            printf 'cd %q\n' "$PWD"
            printf '%s ' env "${envs[@]}" "$BIN/lnetctl"
            for a in "$@"; do printf '%q ' "$a"; done
            printf '>%s/%s.json 2>%s/%s.err </dev/null &\n' "$VSH" "$name" "$VSH" "$name"
            printf 'echo $! >/tmp/%s.pid.fs\nwait $!\necho $? >%s/%s.rc\nrm -f /tmp/%s.pid.fs\n' "$name" "$VSH" "$name" "$name"
        } >"$SH/$name.sh"
        "on_${host,}" "nohup sh $VSH/$name.sh >/dev/null 2>&1 &"
    }
    # The server on B, started through the shared folder (so not with start_serve) and waited for like it.
    serve() {   # serve NAME GET_MODE [ENV...]: starts the server on B and waits until it serves
        launch B "$1" "LND_GET_MODE=$2" "${@:3}" -- serve --nid 192.0.2.2@o2ib --json --ready-file "$VSH/$1.ready"
        wait_file "$SH/$1.ready" 90 "$SH/$1.rc"
    }
    stop() {   # stop A|B NAME [SIGNAL]: signals the process and waits for its exit status
        "on_${1,}" "kill -${3:-TERM} \$(cat /tmp/$2.pid.fs)" || true
        wait_file "$SH/$2.rc" 60
    }
    client() {   # client NAME ARGS...: starts a self-test from A to B's server (with $CLIENT_ENV); returns once its node is up
        local name=$1
        shift
        launch A "$name" ${CLIENT_ENV:-} -- selftest --nid 192.0.2.1@o2ib --to 192.0.2.2@o2ib --verify --json --max-errors 0 \
            --timeout 40s --concurrency "$FS_CONCURRENCY" --ready-file "$VSH/$name.ready" "$@"
        wait_file "$SH/$name.ready" 90 "$SH/$name.rc" || [[ -e $SH/$name.rc ]]
    }
    # After a case the harness could not finish: SIGKILL whatever it started that still runs (by the PIDs it
    # recorded; a process removes its PID file when it ends) and lift any netem.
    kill_leftovers() {
        local h
        for h in a b; do
            "on_$h" 'for f in /tmp/*.pid.fs; do [ -f "$f" ] && kill -KILL "$(cat "$f")" 2>/dev/null; rm -f "$f"; done; true' || true
        done
        netem_both del
    }
    finish() {   # finish NAME [SECONDS]: waits for a client to exit by itself
        wait_file "$SH/$1.rc" "${2:-180}"
    }
    # snap NAME H: the command that saves host H's rxe counters (sysfs hw_counters, "name:value" lines) as
    # NAME.rxe-H.txt in the shared folder; put into the same on_a/on_b command as a fault, so the snapshot is
    # taken right before (or after) it takes effect.
    snap() {
        printf '(cd /sys/class/infiniband/rxe0/ports/1/hw_counters && grep . * >%s/%s.rxe-%s.txt)' "$VSH" "$1" "$2"
    }
    netem_both() {   # netem_both add|del [ARGS] [CASE]: with CASE, snapshots CASE.fault-on before add, CASE.fault-off after del
        local on_a_snap='' on_b_snap=''
        if [[ $1 == add ]]; then
            [[ -n ${3:-} ]] && { on_a_snap="$(snap "$3.fault-on" A); "; on_b_snap="$(snap "$3.fault-on" B); "; }
            on_a "${on_a_snap}tc qdisc add dev eth0 root netem $2" && on_b "${on_b_snap}tc qdisc add dev eth0 root netem $2"
        else
            # netem's own statistics (packets it dropped) go with the case too, read just before the qdisc goes.
            local on_a_stats='' on_b_stats=''
            if [[ -n ${3:-} ]]; then
                on_a_snap="; $(snap "$3.fault-off" A)"; on_b_snap="; $(snap "$3.fault-off" B)"
                on_a_stats="tc -s qdisc show dev eth0 >$VSH/$3.netem-A.txt 2>&1; "
                on_b_stats="tc -s qdisc show dev eth0 >$VSH/$3.netem-B.txt 2>&1; "
            fi
            on_a "${on_a_stats}tc qdisc del dev eth0 root${on_a_snap}" || true
            on_b "${on_b_stats}tc qdisc del dev eth0 root${on_b_snap}" || true
        fi
    }

    run_case() {
        local c=$1 mode op
        note "== case $c"
        case $c in
            netem-*)
                op=${c#netem-}; mode=${op#*-}; op=${op%-*}
                serve "$c.server" "$mode" || return 1
                # Round 1 under the fault (from 2 s in, once the session is set up: address resolution itself may
                # time out under the fault); then the fault goes and round 2 (same client process) must all succeed.
                client "$c.client" --op "$op" --mode "$mode" --size "$FS_NETEM_SIZE" --duration "${DUR}s" \
                    --rounds 2 --round-files "$VSH/$c.round" || return 1
                sleep_s 2
                netem_both add "$FS_NETEM" "$c" || return 1
                wait_file "$SH/$c.round.done-1" 180 "$SH/$c.client.rc" || return 1
                netem_both del "" "$c"
                : >"$SH/$c.round.go-1"
                finish "$c.client" || return 1
                stop B "$c.server"
                ;;
            blackout)
                # The QPs' retry budget must outlast the blackout: a packet is resent after 0.54 s (LND_ACK_TIMEOUT
                # 17), and rxe also spends a retry on each sequence NAK once the link is back, so the default 5
                # retries met a 2 s blackout with up to 5 used, and 6 fail the QP ("retry-exceeded": 2 of the
                # blackout runs of one session). With 7 (the most a QP allows) a send survives 8 x 0.54 s of loss.
                serve "$c.server" pull LND_RETRY_COUNT=7 || return 1
                CLIENT_ENV=LND_RETRY_COUNT=7 client "$c.client" --op write --mode push --size "$FS_SIZE" --duration "${DUR}s" || return 1
                sleep_s 3
                note "blackout: 100% loss on B's link for 2 s"
                on_a "$(snap "$c.fault-on" A)"
                on_b "$(snap "$c.fault-on" B); tc qdisc add dev eth0 root netem loss 100% && sleep 2; tc qdisc del dev eth0 root; s=\$?; $(snap "$c.fault-off" B); exit \$s" || return 1
                on_a "$(snap "$c.fault-off" A)"
                finish "$c.client" || return 1
                stop B "$c.server"
                ;;
            link-down)
                serve "$c.server" pull || return 1
                client "$c.client" --op read --mode pull --size "$FS_SIZE" --duration "${DUR}s" --rounds 2 || return 1
                sleep_s 3
                note "link down: A's eth0 down for 2 s"
                on_a "$(snap "$c.fault-on" A); ip link set eth0 down && sleep 2; ip link set eth0 up; s=\$?; $(snap "$c.fault-off" A); exit \$s" || return 1
                finish "$c.client" || return 1
                stop B "$c.server"
                ;;
            server-kill)
                serve "$c.server" pull || return 1
                client "$c.client" --op read --mode pull --size "$FS_SIZE" --duration "${DUR}s" --rounds 2 || return 1
                sleep_s 3
                note "server killed (SIGKILL)"
                stop B "$c.server" KILL || return 1
                sleep_s 1
                note "server restarted"
                serve "$c.server2" pull || return 1
                finish "$c.client" || return 1
                stop B "$c.server2"
                ;;
            race)
                local i
                for i in 1 2 3; do
                    rm -f "$SH/$c.go$i"
                    for h in A B; do
                        local me=192.0.2.1 peer=192.0.2.2
                        [[ $h == B ]] && { me=192.0.2.2; peer=192.0.2.1; }
                        launch "$h" "$c.$i.$h" -- selftest --nid "$me@o2ib" --to "$peer@o2ib" --op read --size 64KiB \
                            --count 20 --concurrency 2 --verify --json --timeout 60s --serve --await-sessions 1 \
                            --ready-file "$VSH/$c.$i.$h.ready" --start-file "$VSH/$c.go$i"
                    done
                    wait_file "$SH/$c.$i.A.ready" 90 && wait_file "$SH/$c.$i.B.ready" 90 || return 1
                    note "race $i: go"
                    : >"$SH/$c.go$i"
                    finish "$c.$i.A" 120 && finish "$c.$i.B" 120 || return 1
                done
                ;;
            flaps)
                serve "$c.server" pull || return 1
                # Round 1 covers the flaps (15 s, from 2 s after its reads began); round 2 (same process) starts once
                # they are over.
                client "$c.client" --op read --mode pull --size 1MiB --duration "${FS_FLAPS_DURATION}s" --rounds 2 \
                    --round-files "$VSH/$c.round" || return 1
                # Only once the session is set up and reading (round 1 does not retry its set-up).
                traffic A 2000 || return 1
                sleep_s 2
                note "flaps: A's eth0 down 1 s, up 2 s, $FS_FLAPS times"
                on_a "$(qps "$c.before" A); $(snap "$c.fault-on" A); s=0; i=0; while [ \$i -lt $FS_FLAPS ]; do i=\$((i + 1)); ip link set eth0 down || s=1; sleep 1; ip link set eth0 up || s=1; sleep 2; done; $(snap "$c.fault-off" A); $(qps "$c.flapped" A); exit \$s" || return 1
                wait_file "$SH/$c.round.done-1" 120 "$SH/$c.client.rc" || [[ -e $SH/$c.client.rc ]] || return 1
                : >"$SH/$c.round.go-1"
                finish "$c.client" || return 1
                # (a) A new process from A: its own rdma_cm ids, a fresh connection.
                client "$c.new" --op read --mode pull --size 1MiB --count 16 || return 1
                finish "$c.new" 120 || return 1
                # (b) an rdma_cm probe, A -> B (rping, its own port, 18515).
                probe "$c"
                on_a "$(qps "$c.after" A); dmesg >$VSH/$c.dmesg-A.txt"
                on_b "$(qps "$c.after" B); dmesg >$VSH/$c.dmesg-B.txt"
                stop B "$c.server"
                ;;
            cm-probe)   # diagnostic (not in the default list): can rdma_cm still connect A -> B? Plus both kernels' logs.
                on_b "nohup timeout 30 rping -s -a 192.0.2.2 -p 18515 -C 10 -V >$VSH/cm-probe.B.txt 2>&1 &"
                sleep_s 3
                on_a "(ip neigh; ping -c 3 -W 2 192.0.2.2; ip -s link show eth0; timeout 25 rping -c -a 192.0.2.2 -p 18515 -C 10 -V -v; echo rc=\$?) >$VSH/cm-probe.A.txt 2>&1"
                on_a "dmesg >$VSH/cm-probe.dmesg-A.txt"; on_b "dmesg >$VSH/cm-probe.dmesg-B.txt"
                ;;
            *) note "unknown case $c"; return 1 ;;
        esac
    }

    # traffic H PACKETS: waits (at most 60 s) until host H's rxe has received PACKETS more packets: the traffic flows.
    traffic() {
        "on_${1,}" "f=/sys/class/infiniband/rxe0/ports/1/hw_counters/rcvd_pkts; s=\$(cat \$f); i=0; while [ \$((\$(cat \$f) - s)) -lt $2 ]; do i=\$((i + 1)); [ \$i -gt 300 ] && exit 1; sleep 0.2; done"
    }
    # qps NAME H: the command that saves host H's queue pairs (rdma res show qp) as NAME.qp-H.txt.
    qps() {
        printf '(rdma res show qp >%s/%s.qp-%s.txt 2>&1)' "$VSH" "$1" "$2"
    }
    # probe CASE: an rdma_cm probe (rping over port 18515: one connection, 10 verified pings moved by SEND, RDMA READ
    # and RDMA WRITE): server on B, client on A, each with a time limit; outputs and exit statuses in
    # CASE.probe-A.txt / CASE.probe-B.txt ("rc=N" last). One attempt: a reject or a time-out is rdma_cm failing.
    # (It was perftest's ib_send_lat -R, which failed about 1 run in 4 for a reason of its own: it makes two
    # rdma_cm connections and its server listens anew for the second; a capture on both hosts showed the first
    # connected and B rejecting the second REQ 2 ms after it came - no listener, "invalid service ID", REJECTED
    # error 8 - after which the client crashed and its retries met a server still waiting for the first.)
    probe() {
        rm -f "$SH/$1.probe-A.txt" "$SH/$1.probe-B.txt"
        on_b "nohup sh -c '(timeout 40 rping -s -a 192.0.2.2 -p 18515 -C 10 -V; echo rc=\$?) >$VSH/$1.probe-B.txt 2>&1' >/dev/null 2>&1 &"
        # The client starts once the server listens (its rdma_cm id on port 18515 is in state LISTEN), not after
        # a fixed wait: a client that comes before is rejected at once.
        on_b "for i in \$(seq 1 300); do rdma res show cm_id 2>/dev/null | grep -Eq 'LISTEN.*:18515' && exit 0; sleep 0.1; done; exit 1" \
            || note "the probe's server on B was not listening after 30 s"
        on_a "(timeout 25 rping -c -a 192.0.2.2 -p 18515 -C 10 -V -v; echo rc=\$?) >$VSH/$1.probe-A.txt 2>&1"
        local i
        for ((i = 0; i < 450; i++)); do
            grep -q '^rc=' "$SH/$1.probe-B.txt" 2>/dev/null && return 0
            sleep 0.1
        done
        note "the probe's server on B did not finish"
    }

    counters() {   # counters NAME: both hosts' rxe counters into the shared folder
        local h
        for h in a b; do
            "on_$h" "$(snap "$1" "${h^}")" || true
        done
    }
    for c in $FS_CASES; do
        counters "$c.before"
        if ! run_case "$c"; then
            note "case $c: the harness failed (see above)"
            : >"$SH/$c.harness-failed"
            failures=$((failures + 1))
            kill_leftovers
        fi
        counters "$c.after"
    done
    # Keep every file of the run.
    mkdir -p "$FS_OUT"
    cp "$SH"/*.json "$SH"/*.err "$SH"/*.rc "$SH"/*.txt "$FS_OUT"/ 2>/dev/null || true
    cp "$SH"/*.harness-failed "$FS_OUT"/ 2>/dev/null || true
    note "orchestrator done ($failures harness failures)"
    exit 0
fi

# ---------------------------------------------------------------------------------------------------------------
# This machine: run both VMs with the orchestrator as the fault script, then judge the results.
cd "$(dirname "$0")/.."
cases=("$@")
((${#cases[@]} > 0)) || cases=("${ALL_CASES[@]}")
export FS_BIN=${FAULT_SUITE_BIN:-$PWD/.build/debug}
export FS_DURATION=${FAULT_SUITE_DURATION:-10}
export FS_SIZE=${FAULT_SUITE_SIZE:-256KiB}
export FS_NETEM_SIZE=${FAULT_SUITE_NETEM_SIZE:-64KiB}
export FS_CONCURRENCY=${FAULT_SUITE_CONCURRENCY:-4}
export FS_FLAPS=5                   # the judge expects 5 (scripts/fault-summary.py FLAPS)
export FS_FLAPS_DURATION=${FAULT_SUITE_FLAPS_DURATION:-20}
export FS_OUT=$PWD/results/fault-suite
export FS_CASES="${cases[*]}"
export LND_TIMEOUT=${LND_TIMEOUT:-10}
# An ACK the server could not send (its connection failed after the data was in) ends its operation with an ACK
# timeout from LNet, within the self-test's own --timeout (40 s).
export LNET_TRANSACTION_TIMEOUT=${LNET_TRANSACTION_TIMEOUT:-20}
export FS_NETEM=${FAULT_SUITE_NETEM:-loss 1% delay 5ms 2ms reorder 25% 50%}
[[ -x $FS_BIN/lnetctl ]] || die "no $FS_BIN/lnetctl (build first: swift build)"
rm -rf "$FS_OUT" results/fault-suite.txt results/fault-suite.json
mkdir -p results
start=$(date +%s)
harness=0
SOFTROCE_2HOST_TIMEOUT=${SOFTROCE_2HOST_TIMEOUT:-1800} SOFTROCE_2HOST_GRACE=0 SOFTROCE_2HOST_FAULT_TIMEOUT=120 \
    scripts/softroce-2host.sh \
    --a 'until [ -e "$SOFTROCE_2HOST_SHARED/finished" ]; do sleep 0.5; done' \
    --b 'until [ -e "$SOFTROCE_2HOST_SHARED/finished" ]; do sleep 0.5; done' \
    --faults 'exec scripts/fault-suite.sh --orchestrate' || harness=$?
echo "fault-suite: two-host run ended with status $harness after $(( $(date +%s) - start )) s"
judge=0
scripts/fault-summary.py "$FS_OUT" "${cases[@]}" --text results/fault-suite.txt --json results/fault-suite.json || judge=$?
cat results/fault-suite.txt
((harness == 0 && judge == 0))
