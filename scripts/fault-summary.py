#!/usr/bin/env python3
"""Judges the files of a scripts/fault-suite.sh run and prints its summary table.

Usage: fault-summary.py DIR CASE... [--text FILE] [--json FILE]

DIR holds, per process, NAME.json (lnetctl's --json output), NAME.err (its stderr) and NAME.rc (its exit status,
present once it exited), and both hosts' rxe counters (sysfs hw_counters, "name:value" lines) saved by the
orchestrator: CASE.before.rxe-H.txt / CASE.after.rxe-H.txt around each case, and CASE.fault-on.rxe-H.txt /
CASE.fault-off.rxe-H.txt around the fault itself (netem, blackout, link down), for H = A and B.
Exit status 0 when every case passed.

What every process must show (nothing is clamped, nothing is assumed):
- it exited by itself with a status the case expects: a self-test client 0 if it reports "passed": true, else 1
  (and the case says which it must be); a server 0 (it is stopped with SIGTERM). Only a process the case killed
  may end with 137 (SIGKILL), and then it must. Any other status (a crash, 137 from the OOM killer) fails the
  case, also when the process had printed its JSON.
- its JSON, with the LNet accounting: handed to the LND = finalized ok + finalized with an error, none pending,
  none left unfinalized at shutdown, none finalized twice.
- per round and per process: attempted = succeeded + failed (any difference, either sign, is a failure and counts
  as lost), every success verified, no verification failure.
And every case must show that its fault hit (the evidence is printed in the table):
- netem-*: during the fault (between fault-on and fault-off) the rxe counters of loss and reordering (retransmissions,
  out-of-sequence packets, sequence NAKs, duplicates; both hosts) moved at least MIN_LOSS_EVENTS times, and more
  than in the session after the fault (fault-off to after: the same traffic without it), which must succeed entirely.
- blackout: rxe retransmitted at least MIN_BLACKOUT_RETRIES times during the blackout (more than after it), and
  every operation succeeded.
- link-down: A's rxe port went down (link_downed moved), operations failed with an error, the connection was rebuilt.
- server-kill: the server died of the case's SIGKILL, operations failed with an error, the client reconnected.
- race: in each race one connection each way at the end and both sessions passed; a connection request was rejected
  (by B, the higher NID: the lower one accepts) in at least one of the races; A sent no reject.
- flaps: A's rxe port went down once per flap (link_downed moved FLAPS times between fault-on and fault-off), the
  flaps failed operations with an error, the client rebuilt its connection and its second session (after the flaps)
  succeeded entirely, with at most MAX_ATTEMPTS_PER_FLAP connection attempts (established + failed, the client's
  whole life) per flap and at most MAX_FAILED_ATTEMPTS_PER_SECOND failed ones in any second of its log; then A's
  rdma_cm still worked: a new self-test process from A (flaps.new) passed entirely, and an rdma_cm probe (rping;
  flaps.probe-A.txt / flaps.probe-B.txt, "rc=N" last) connected and finished on both sides (rc=0). Where the
  queue pairs were saved (rdma res show qp), A's GSI QP (QP1, which carries rdma_cm's MADs) must not have left
  RTS - though a broken rdma_cm was seen with QP1 still listed in RTS: the new process and the probe decide.
"""
import json
import re
import os
import sys

SELFTEST_TIMEOUT = "timeout"  # the error kind of an operation that the self-test itself timed out
KILLED = 137                  # 128 + SIGKILL, as the launching shell reports it

# rxe hw_counters that show loss, reordering or a dead link, with the label printed in the table.
RETRIES = "completer_retry_err"      # the requester resent (ACK timeout or sequence NAK)
OUT_OF_SEQUENCE = "out_of_seq_request"  # the responder saw a packet past a gap
SEQUENCE_NAKS = "rcvd_seq_err"       # the requester got a sequence-error NAK
DUPLICATES = "duplicate_request"     # the responder saw a packet again (a resend)
RETRY_EXCEEDED = "retry_exceeded_err"
LINK_DOWNED = "link_downed"
SEND_ERRORS = "send_err"
LABELS = [(RETRIES, "retries"), (OUT_OF_SEQUENCE, "out-of-seq"), (SEQUENCE_NAKS, "seq-NAKs"),
          (DUPLICATES, "dups"), (RETRY_EXCEEDED, "retry-exceeded"), (LINK_DOWNED, "link-down"),
          (SEND_ERRORS, "send-errors")]
LOSS_EVIDENCE = (RETRIES, OUT_OF_SEQUENCE, SEQUENCE_NAKS, DUPLICATES)
# rxe resends now and then without any fault (its retry timer fires spuriously): windows without a fault showed 0-3
# such events over both hosts, a no-op netem ("delay 1us") 1, the netem setting of the suite 34-114 and a 2 s
# blackout 10 retries. So a fault must show at least this many, and more than the same traffic showed after it.
MIN_LOSS_EVENTS = 8
MIN_BLACKOUT_RETRIES = 3
# The flaps case: scripts/fault-suite.sh flaps A's link FLAPS times (down 1 s, up 2 s). With the LND's back-off
# (50 ms doubling to 1 s while attempts fail) a 1 s outage costs about 5 failed attempts and one that succeeds once
# the link is back; without it the client made ~100 attempts in a few seconds. So at most this many per flap,
# counted over the client's whole life (its first connection and the second session's included).
FLAPS = 5
MAX_ATTEMPTS_PER_FLAP = 10
# ... and at most this many failed attempts in any one second of the client's log (its "closing:" warnings: a
# connection closed before it was established, or for a timeout). With the back-off a 1 s outage fails at 0, 50,
# 150, 350 and 750 ms (4-5 a second were seen); without it, 11-16 a second were seen (the CM then broke).
MAX_FAILED_ATTEMPTS_PER_SECOND = 8
ATTEMPT_LINE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)\S* warning .*\bclosing: ")


def load(directory, name):
    """(exit status or None if it never exited, parsed JSON or None, stderr tail)."""
    rc = json_value = None
    try:
        with open(os.path.join(directory, name + ".rc")) as f:
            text = f.read().strip()
            rc = int(text) if text else None
    except (OSError, ValueError):
        pass
    try:
        with open(os.path.join(directory, name + ".json")) as f:
            text = f.read().strip()
            json_value = json.loads(text) if text else None
    except (OSError, ValueError):
        pass
    err = ""
    try:
        with open(os.path.join(directory, name + ".err")) as f:
            lines = [line.strip() for line in f if line.strip()]
            err = lines[-1] if lines else ""
    except OSError:
        pass
    return rc, json_value, err


def load_counters(directory, name):
    """The rxe counters of one snapshot ("name:value" lines), or None if it was not saved."""
    try:
        with open(os.path.join(directory, name)) as f:
            values = {}
            for line in f:
                key, _, value = line.strip().partition(":")
                if key and value.strip().lstrip("-").isdigit():
                    values[key] = int(value)
            return values or None
    except OSError:
        return None


class Case:
    def __init__(self, name, directory):
        self.name = name
        self.directory = directory
        self.attempted = self.succeeded = self.failed = 0
        self.lost_ops = 0
        self.lost_messages = 0
        self.bytes_verified = 0
        self.problems = []
        self.notes = []

    @property
    def lost(self):
        return self.lost_ops + self.lost_messages

    def check(self, condition, problem):
        if not condition:
            self.problems.append(problem)
        return condition

    # -- processes -------------------------------------------------------------------------------------------

    def killed(self, name):
        """A process the case SIGKILLed: it must have died of that signal (its output is not judged)."""
        rc, _, err = load(self.directory, name)
        if rc is None:
            self.problems.append(f"{name}: no exit status (the case killed it; did it hang?)")
        else:
            self.check(rc == KILLED, f"{name}: exit {rc}, expected {KILLED} (killed by the case)"
                       + (f" ({err})" if err else ""))

    def process(self, name, expect_rc):
        """Loads a process the case did not kill: it must have exited with `expect_rc` (a status or a set of
        them) and printed its JSON, whose message accounting must add up. Returns (rc, JSON) or (rc, None)."""
        expected = {expect_rc} if isinstance(expect_rc, int) else set(expect_rc)
        rc, obj, err = load(self.directory, name)
        if rc is None:
            self.problems.append(f"{name}: did not exit (hung or never started)")
            return None, obj
        if rc not in expected:
            how = "killed by SIGKILL, not by the case" if rc == KILLED else \
                  f"died of signal {rc - 128}" if rc > 128 else "unexpected status"
            self.problems.append(f"{name}: exit {rc} ({how}), expected {' or '.join(map(str, sorted(expected)))}"
                                 + (" - after printing its JSON" if obj is not None and rc > 128 else "")
                                 + (f" ({err})" if err else ""))
        if obj is None:
            self.problems.append(f"{name}: no JSON output" + (f" ({err})" if err else ""))
            return rc, None
        if "error" in obj and obj.get("ok") is False:
            self.problems.append(f"{name}: failed before reporting: {obj['error']}")
            return rc, None
        lnet = obj.get("lnet") or {}
        if not lnet:
            self.problems.append(f"{name}: no message accounting in its output")
        else:
            finalized = lnet["finalized_ok"] + lnet["finalized_error"]
            difference = lnet["handed_to_lnd"] - finalized
            if difference != 0:
                self.problems.append(f"{name}: {lnet['handed_to_lnd']} messages handed to the LND but {finalized} "
                                     f"finalized ({lnet['finalized_ok']} ok, {lnet['finalized_error']} with an error)")
            self.lost_messages += abs(difference) + lnet["pending"] + lnet["unfinalized_at_shutdown"]
            self.check(lnet["pending"] == 0, f"{name}: {lnet['pending']} messages still pending")
            self.check(lnet["unfinalized_at_shutdown"] == 0,
                       f"{name}: {lnet['unfinalized_at_shutdown']} messages left unfinalized by the LND at shutdown")
            self.check(lnet["finalized_twice"] == 0, f"{name}: {lnet['finalized_twice']} messages finalized twice")
            self.check(lnet["exactly_once"] is True, f"{name}: not finalized exactly once: {lnet}")
        return rc, obj

    def server(self, name):
        """`lnetctl serve`, stopped by the case with SIGTERM: exit 0, accounting, every served write verified."""
        _, obj = self.process(name, 0)
        if obj is not None:
            self.check(obj.get("verification_failures") == 0,
                       f"{name}: {obj.get('verification_failures')} served writes failed verification")
        return obj

    def client(self, name, expect):
        """A self-test client. `expect`: "pass" (every round passed, exit 0), "fail" (it reported a failure,
        exit 1) or "either" (exit 0 if it reported passed, else 1). Adds its operation counts; returns its rounds."""
        expected = {"pass": {0}, "fail": {1}, "either": {0, 1}}[expect]
        rc, obj = self.process(name, expected)
        if obj is None:
            return []
        passed = obj.get("passed")
        self.check(isinstance(passed, bool), f"{name}: no \"passed\" in its JSON")
        if rc in (0, 1) and isinstance(passed, bool):
            self.check((rc == 0) == passed, f"{name}: exit {rc} but its JSON says passed={passed}")
        if expect == "pass":
            self.check(passed is True, f"{name}: the self-test failed: {obj.get('first_error') or obj.get('setup_error')}")
        elif expect == "fail":
            self.check(passed is False, f"{name}: reported passed although the fault should have failed operations")
        rounds = obj.get("rounds") or [obj]
        for index, r in enumerate(rounds, 1):
            where = f"{name} round {index}" if len(rounds) > 1 else name
            difference = r["attempted"] - r["succeeded"] - r["failed"]
            self.check(difference == 0, f"{where}: attempted {r['attempted']} != succeeded {r['succeeded']} "
                                        f"+ failed {r['failed']}")
            self.lost_ops += abs(difference)
            self.attempted += r["attempted"]
            self.succeeded += r["succeeded"]
            self.failed += r["failed"]
            self.check(r["verified_ops"] == r["succeeded"],
                       f"{where}: {r['succeeded']} operations succeeded but {r['verified_ops']} were verified")
            self.check(r["verification_failures"] == 0, f"{where}: {r['verification_failures']} verification failures")
            if r["verified_ops"] == r["succeeded"] and r["verification_failures"] == 0:
                self.bytes_verified += r["bytes"]
        if len(rounds) > 1:   # the process's own totals must be the sums of its rounds
            for key in ("attempted", "succeeded", "failed", "verified_ops", "verification_failures"):
                total = sum(r[key] for r in rounds)
                self.check(obj.get(key) == total, f"{name}: total {key} {obj.get(key)} != {total}, the sum of its rounds")
        self.check(obj["attempted"] == obj["succeeded"] + obj["failed"],
                   f"{name}: attempted {obj['attempted']} != succeeded {obj['succeeded']} + failed {obj['failed']}")
        served = obj.get("served")
        if served:
            self.check(served["verification_failures"] == 0, f"{name}: served writes failed verification")
        return rounds

    @staticmethod
    def errors(rounds):
        kinds = {}
        for r in rounds:
            for kind, count in (r.get("error_kinds") or {}).items():
                kinds[kind] = kinds.get(kind, 0) + count
        return kinds

    # -- rxe counters ----------------------------------------------------------------------------------------

    def counter_delta(self, before, after, host):
        """{counter: after - before} of one host between two snapshots, or None (a problem) if one is missing."""
        a = load_counters(self.directory, f"{self.name}.{before}.rxe-{host}.txt")
        b = load_counters(self.directory, f"{self.name}.{after}.rxe-{host}.txt")
        if a is None or b is None:
            missing = [f"{self.name}.{s}.rxe-{host}.txt" for s, v in ((before, a), (after, b)) if v is None]
            self.problems.append(f"no rxe counters saved ({', '.join(missing)})")
            return None
        delta = {key: b[key] - a[key] for key in b if key in a and key != "lifespan"}
        backwards = sorted(key for key, value in delta.items() if value < 0)
        if backwards:
            self.problems.append(f"rxe counters of {host} went backwards from {before} to {after} "
                                 f"({', '.join(backwards)}): not the same device?")
        return delta

    def evidence(self, before, after, what, hosts="AB"):
        """The hosts' counter deltas; a note with the moved ones. Returns {host: delta} (missing hosts left out)."""
        deltas = {}
        parts = []
        for host in hosts:
            delta = self.counter_delta(before, after, host)
            if delta is None:
                continue
            deltas[host] = delta
            moved = [f"{label} {delta[key]}" for key, label in LABELS if delta.get(key, 0) != 0]
            parts.append(f"{host}: " + (", ".join(moved) if moved else "nothing moved"))
        if parts:
            self.notes.append(f"rxe {what}: " + "; ".join(parts))
        return deltas

    @staticmethod
    def total(deltas, keys, hosts="AB"):
        return sum(deltas[h].get(k, 0) for h in hosts if h in deltas for k in keys)

    def netem_drops(self):
        """Packets netem itself dropped during the case, by host (from `tc -s qdisc show`, read right before the
        qdisc was removed), or None when no statistics were saved."""
        drops = {}
        for host in "AB":
            path = os.path.join(self.directory, f"{self.name}.netem-{host}.txt")
            if not os.path.exists(path):
                continue
            found = re.findall(r"dropped (\d+)", open(path, errors="replace").read())
            drops[host] = sum(int(n) for n in found)
        return drops or None

    def fault_evidence(self, fault, keys, minimum, what, netem=False):
        """The fault's counters (fault-on to fault-off, both hosts) must show at least `minimum` of `keys`, and
        more than the same case showed after the fault (fault-off to after). For netem, packets netem itself
        dropped during the fault are direct evidence too: either suffices."""
        drops = self.netem_drops() if netem else None
        if drops is not None:
            self.notes.append(f"netem dropped {sum(drops.values())} packets ("
                              + ", ".join(f"{h}: {n}" for h, n in sorted(drops.items())) + ")")
        during = self.evidence("fault-on", "fault-off", f"during {fault}")
        if len(during) < 2:
            return
        after = {}
        for host in "AB":
            delta = self.counter_delta("fault-off", "after", host)
            if delta is not None:
                after[host] = delta
        events, baseline = self.total(during, keys), self.total(after, keys)
        self.notes.append(f"{events} {what.split(' (')[0]} during {fault}, {baseline} after it")
        dropped = sum((drops or {}).values())
        self.check(dropped > 0 or (events >= minimum and events > baseline),
                   f"{fault} showed no effect: {events} {what} during it (at least {minimum} needed, "
                   f"and more than the {baseline} after it)" + (f", and netem dropped {dropped} packets" if netem else ""))


def judge_rounds(case, rounds, expect_failures):
    """The two sessions of a fault case: during the fault (failures required or allowed), then after it (all ok)."""
    if len(rounds) != 2:
        case.problems.append(f"client ran {len(rounds)} of 2 sessions")
        return
    during, after = rounds
    kinds = case.errors([during])
    case.check(during["attempted"] > 0, "no operation ran during the fault")
    if expect_failures:
        case.check(during["failed"] > 0, "the fault failed no operation (did it hit during traffic?)")
    case.check(SELFTEST_TIMEOUT not in kinds,
               f"{kinds.get(SELFTEST_TIMEOUT)} operations were ended by the self-test's timeout, not the LND")
    case.check(after["attempted"] > 0 and after["failed"] == 0 and after["succeeded"] == after["attempted"]
               and after["verified_ops"] == after["attempted"],
               f"after the fault: {after['failed']} of {after['attempted']} failed, {after['verified_ops']} verified")
    case.notes.append(f"during: {during['succeeded']}/{during['attempted']} ok"
                      + (", errors " + ", ".join(f"{k} x{v}" for k, v in sorted(kinds.items())) if kinds else ""))
    case.notes.append(f"after: {after['succeeded']}/{after['attempted']} ok")


def probe_status(directory, name):
    """The exit status a probe's output file ends with ("rc=N"), or None (no file, or it never finished)."""
    try:
        with open(os.path.join(directory, name)) as f:
            found = re.findall(r"^rc=(\d+)\s*$", f.read(), re.MULTILINE)
    except OSError:
        return None
    return int(found[-1]) if found else None


def gsi_state(directory, name):
    """The state of the GSI QP (QP1) in an `rdma res show qp` listing, or None if it was not saved or not found."""
    try:
        with open(os.path.join(directory, name)) as f:
            text = f.read()
    except OSError:
        return None
    found = re.search(r"\blqpn 1 type GSI state (\S+)", text)
    return found.group(1) if found else None


def failed_attempts_per_second(directory, name):
    """{second: failed connection attempts logged in it} from a process's stderr, or None without the file."""
    try:
        with open(os.path.join(directory, name + ".err"), errors="replace") as f:
            seconds = {}
            for line in f:
                found = ATTEMPT_LINE.match(line)
                if found:
                    seconds[found.group(1)] = seconds.get(found.group(1), 0) + 1
            return seconds
    except OSError:
        return None


def judge_flaps(case):
    name, directory = case.name, case.directory
    case.server(name + ".server")
    rounds = case.client(name + ".client", "fail")
    if rounds:
        judge_rounds(case, rounds, expect_failures=True)
    _, client, _ = load(directory, name + ".client")
    if client is not None:
        lnd = client.get("lnd") or {}
        established = lnd.get("connections_established", 0)
        failed = lnd.get("connect_attempts_failed", 0)
        attempts = established + failed
        bound = MAX_ATTEMPTS_PER_FLAP * FLAPS
        case.check(established >= 2, f"the client made {established} connections; expected a rebuilt one")
        case.check(attempts <= bound, f"the client made {attempts} connection attempts ({established} established, "
                                      f"{failed} failed) for {FLAPS} flaps: more than {bound} ({MAX_ATTEMPTS_PER_FLAP} "
                                      "per flap): no back-off?")
        case.notes.append(f"client connection attempts {attempts} ({established} established, {failed} failed; "
                          f"at most {bound} allowed), closed {lnd.get('connections_closed')}")
        seconds = failed_attempts_per_second(directory, name + ".client")
        if seconds:
            busiest, most = max(seconds.items(), key=lambda item: (item[1], item[0]))
            case.check(most <= MAX_FAILED_ATTEMPTS_PER_SECOND,
                       f"the client logged {most} failed connection attempts in one second ({busiest}): more than "
                       f"{MAX_FAILED_ATTEMPTS_PER_SECOND}: no back-off?")
            case.notes.append(f"failed attempts in the client's log: {sum(seconds.values())} in {len(seconds)} seconds, "
                              f"at most {most} in one ({MAX_FAILED_ATTEMPTS_PER_SECOND} allowed)")
    deltas = case.evidence("fault-on", "fault-off", "around the flaps", hosts="A")
    if "A" in deltas:
        downs = deltas["A"].get(LINK_DOWNED, 0)
        case.check(downs >= FLAPS, f"A's rxe port went down {downs} times (link_downed), not once per flap ({FLAPS})")
    # After the flaps: a new process from A ...
    before = len(case.problems)
    new_rounds = case.client(name + ".new", "pass")
    if new_rounds and len(case.problems) == before:
        case.notes.append(f"a new process after the flaps: {sum(r['succeeded'] for r in new_rounds)}/"
                          f"{sum(r['attempted'] for r in new_rounds)} ok")
    else:
        case.problems.append("a new process from A could not work after the flaps (see above)")
    # ... and an rdma_cm probe (rping).
    statuses = {host: probe_status(directory, f"{name}.probe-{host}.txt") for host in "AB"}
    for host, role in (("A", "client"), ("B", "server")):
        rc = statuses[host]
        case.check(rc == 0, f"the rdma_cm probe (rping) {role} on {host} "
                            + ("did not finish" if rc is None else f"exited {rc}")
                            + (": rdma_cm cannot connect A -> B after the flaps" if host == "A" else ""))
    if statuses["A"] == 0 and statuses["B"] == 0:
        case.notes.append("the rdma_cm probe (rping) connected A -> B after the flaps")
    states = {when: gsi_state(directory, f"{name}.{when}.qp-A.txt") for when in ("before", "flapped", "after")}
    if any(states.values()):
        case.notes.append("A's GSI QP (QP1): " + ", ".join(f"{when} {state or '?'}" for when, state in states.items()))
    for when in ("flapped", "after"):
        if states[when] is not None:
            case.check(states[when] == "RTS", f"A's GSI QP (QP1, rdma_cm's MADs) is in state {states[when]} "
                                              f"{'right after the flaps' if when == 'flapped' else 'at the end'}")


def judge(directory, name):
    case = Case(name, directory)
    if os.path.exists(os.path.join(directory, name + ".harness-failed")):
        case.problems.append("the harness failed during this case (see the [F] lines)")
    if name.startswith("netem-"):
        case.server(name + ".server")
        rounds = case.client(name + ".client", "either")
        if rounds:
            judge_rounds(case, rounds, expect_failures=False)
        case.fault_evidence("netem", LOSS_EVIDENCE, MIN_LOSS_EVENTS,
                            "loss/reorder events (retransmissions, out-of-sequence packets, sequence NAKs, duplicates)",
                            netem=True)
    elif name == "blackout":
        case.server(name + ".server")
        rounds = case.client(name + ".client", "pass")
        case.check(case.attempted > 0, "no operation ran")
        case.check(case.failed == 0, f"{case.failed} operations failed: {case.errors(rounds)}")
        case.fault_evidence("the blackout", (RETRIES,), MIN_BLACKOUT_RETRIES, "retransmissions")
    elif name in ("link-down", "server-kill"):
        if name == "server-kill":
            case.killed(name + ".server")
            case.server(name + ".server2")
        else:
            case.server(name + ".server")
        rounds = case.client(name + ".client", "fail")
        if rounds:
            judge_rounds(case, rounds, expect_failures=True)
        _, client, _ = load(directory, name + ".client")
        lnd = (client or {}).get("lnd") or {}
        if client is not None:
            case.check(lnd.get("connections_established", 0) >= 2,
                       f"the client made {lnd.get('connections_established')} connections; expected a rebuilt one")
            case.notes.append(f"client connections {lnd.get('connections_established')}, "
                              f"closed {lnd.get('connections_closed')}")
        if name == "link-down":
            deltas = case.evidence("fault-on", "fault-off", "around the link down", hosts="A")
            if "A" in deltas:
                case.check(deltas["A"].get(LINK_DOWNED, 0) >= 1, "A's rxe port never went down (link_downed did not move)")
    elif name == "race":
        races_ok = 0
        raced = 0
        rejects = {"A": 0, "B": 0}
        for i in (1, 2, 3):
            ok = True
            rejected = 0
            for host, peer in (("A", "192.0.2.2@o2ib"), ("B", "192.0.2.1@o2ib")):
                before = len(case.problems)
                case.client(f"race.{i}.{host}", "pass")
                _, obj, _ = load(directory, f"race.{i}.{host}")
                lnd = (obj or {}).get("lnd") or {}
                to_peer = [c for c in lnd.get("connections_at_end", []) if c["peer"] == peer]
                case.check(len(to_peer) == 1, f"race {i} {host}: {len(to_peer)} connections to {peer} at the end")
                sent = lnd.get("rejects_sent", 0)
                rejects[host] += sent
                rejected += sent
                ok = ok and len(case.problems) == before
            races_ok += ok
            raced += rejected > 0
        case.check(raced >= 1, "no race happened: no connection request was rejected in any of the 3 races")
        case.check(rejects["A"] == 0, f"A (the lower NID) rejected {rejects['A']} connection requests; "
                                      "in a race the lower NID accepts the higher one's")
        case.notes.append(f"one connection each way and both sessions passed in {races_ok} of 3 races; "
                          f"a request rejected in {raced} of 3 (rejects sent: A {rejects['A']}, B {rejects['B']})")
    elif name == "flaps":
        judge_flaps(case)
    elif name == "cm-probe":
        try:
            with open(os.path.join(directory, "cm-probe.A.txt")) as f:
                text = f.read()
        except OSError:
            text = ""
        case.check("rc=0" in text, "rping could not connect A -> B after the faults")
        case.notes.append("diagnostic: rdma_cm still connects A -> B")
    else:
        case.problems.append("unknown case")
    case.check(case.lost == 0, f"{case.lost} lost ({case.lost_ops} operations unaccounted, "
                               f"{case.lost_messages} messages not finalized)")
    return case


def main():
    args = sys.argv[1:]
    text_path = json_path = None
    if "--text" in args:
        i = args.index("--text"); text_path = args[i + 1]; del args[i:i + 2]
    if "--json" in args:
        i = args.index("--json"); json_path = args[i + 1]; del args[i:i + 2]
    if len(args) < 2:
        sys.stderr.write(__doc__)
        return 2
    directory, names = args[0], args[1:]
    cases = [judge(directory, name) for name in names]
    header = f"{'fault':18} {'attempted':>9} {'succeeded':>9} {'failed':>7} {'lost':>5} {'bytes verified':>15}  result"
    lines = ["fault suite (two SoftRoCE VMs, verified self-test traffic)", header, "-" * len(header)]
    for c in cases:
        result = "PASS" if not c.problems else "FAIL"
        lines.append(f"{c.name:18} {c.attempted:9} {c.succeeded:9} {c.failed:7} {c.lost:5} {c.bytes_verified:15}  {result}")
        for n in c.notes:
            lines.append(f"    {n}")
        for p in c.problems:
            lines.append(f"    FAIL: {p}")
    passed = sum(1 for c in cases if not c.problems)
    lines.append(f"fault suite: {passed} of {len(cases)} cases passed")
    text = "\n".join(lines) + "\n"
    if text_path:
        with open(text_path, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    if json_path:
        with open(json_path, "w") as f:
            json.dump({"cases": [{"fault": c.name, "attempted": c.attempted, "succeeded": c.succeeded, "failed": c.failed,
                                  "lost": c.lost, "bytes_verified": c.bytes_verified, "passed": not c.problems,
                                  "problems": c.problems, "notes": c.notes} for c in cases],
                       "passed": passed, "total": len(cases)}, f, indent=1)
    return 0 if passed == len(cases) else 1


if __name__ == "__main__":
    sys.exit(main())
