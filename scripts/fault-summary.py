#!/usr/bin/env python3
"""Judges the files of a scripts/fault-suite.sh run and prints its summary table.

Usage: fault-summary.py DIR CASE... [--text FILE] [--json FILE]

DIR holds, per process, NAME.json (lnetctl's --json output), NAME.err (its stderr) and NAME.rc (its exit status,
present once it exited). Exit status 0 when every case passed.
"""
import json
import os
import sys

SELFTEST_TIMEOUT = "timeout"  # the error kind of an operation that the self-test itself timed out


def load(directory, name):
    """(exit status or None if it never exited, parsed JSON or None, stderr tail)."""
    rc = json_value = None
    try:
        with open(os.path.join(directory, name + ".rc")) as f:
            rc = int(f.read().strip() or "-1")
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


class Case:
    def __init__(self, name):
        self.name = name
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

    def process(self, directory, name, expect_rc=0):
        """Loads one process's files; checks it exited (with expect_rc) and its message accounting."""
        rc, obj, err = load(directory, name)
        if rc is None:
            self.problems.append(f"{name}: did not exit (hung or never started)")
            return None
        if expect_rc is not None and rc != expect_rc:
            self.problems.append(f"{name}: exit {rc}, expected {expect_rc}" + (f" ({err})" if err else ""))
        if rc == 137:
            return obj  # killed: nothing to account
        if obj is None:
            self.problems.append(f"{name}: no JSON output" + (f" ({err})" if err else ""))
            return None
        lnet = obj.get("lnet") or {}
        if not lnet:
            self.problems.append(f"{name}: no message accounting in its output")
        else:
            unfinalized = lnet["handed_to_lnd"] - lnet["finalized_ok"] - lnet["finalized_error"]
            self.lost_messages += max(0, unfinalized) + lnet["pending"] + lnet["unfinalized_at_shutdown"]
            self.check(lnet["exactly_once"], f"{name}: not finalized exactly once: {lnet}")
            self.check(lnet["finalized_twice"] == 0, f"{name}: {lnet['finalized_twice']} messages finalized twice")
        return obj

    def client(self, obj, name):
        """Adds a self-test client's operation counts; checks that success means verified."""
        if obj is None:
            return []
        rounds = obj.get("rounds") or [obj]
        for r in rounds:
            self.attempted += r["attempted"]
            self.succeeded += r["succeeded"]
            self.failed += r["failed"]
            self.lost_ops += r["attempted"] - r["succeeded"] - r["failed"]
            self.check(r["verified_ops"] == r["succeeded"],
                       f"{name}: {r['succeeded']} operations succeeded but {r['verified_ops']} were verified")
            self.check(r["verification_failures"] == 0, f"{name}: {r['verification_failures']} verification failures")
            if r["verified_ops"] == r["succeeded"]:
                self.bytes_verified += r["bytes"]
        served = obj.get("served")
        if served:
            self.check(served["verification_failures"] == 0, f"{name}: served writes failed verification")
        return rounds

    def errors(self, rounds):
        kinds = {}
        for r in rounds:
            for kind, count in (r.get("error_kinds") or {}).items():
                kinds[kind] = kinds.get(kind, 0) + count
        return kinds


def judge(directory, name):
    case = Case(name)
    if os.path.exists(os.path.join(directory, name + ".harness-failed")):
        case.problems.append("the harness failed during this case (see the [F] lines)")
    if name == "blackout":
        server = case.process(directory, name + ".server")
        client = case.process(directory, name + ".client")
        rounds = case.client(client, "client")
        case.check(case.failed == 0, f"{case.failed} operations failed: {case.errors(rounds)}")
        case.check(case.attempted > 0, "no operation ran")
        if server:
            case.check(server.get("verification_failures", 0) == 0, "server: verification failures")
        if client and client.get("lnd"):
            case.notes.append(f"connections {client['lnd']['connections_established']}")
    elif name in ("link-down", "server-kill") or name.startswith("netem-"):
        if name == "server-kill":
            case.process(directory, name + ".server", expect_rc=137)
            case.process(directory, name + ".server2")
        else:
            case.process(directory, name + ".server")
        client = case.process(directory, name + ".client", expect_rc=None)
        rounds = case.client(client, "client")
        if len(rounds) == 2:
            during, after = rounds
            kinds = case.errors([during])
            if not name.startswith("netem-"):
                case.check(during["failed"] > 0, "the fault failed no operation (did it hit during traffic?)")
            case.check(SELFTEST_TIMEOUT not in kinds,
                       f"{kinds.get(SELFTEST_TIMEOUT)} operations were ended by the self-test's timeout, not the LND")
            case.check(after["attempted"] > 0 and after["failed"] == 0 and after["verified_ops"] == after["attempted"],
                       f"after the fault: {after['failed']} of {after['attempted']} failed")
            case.notes.append(f"during: {during['succeeded']}/{during['attempted']} ok"
                              + (", errors " + ", ".join(f"{k} x{v}" for k, v in sorted(kinds.items())) if kinds else ""))
            case.notes.append(f"after: {after['succeeded']}/{after['attempted']} ok")
        elif client is not None:
            case.problems.append(f"client ran {len(rounds)} of 2 sessions: {client.get('setup_error')}")
        if client and client.get("lnd") and not name.startswith("netem-"):
            lnd = client["lnd"]
            case.check(lnd["connections_established"] >= 2,
                       f"the client made {lnd['connections_established']} connections; expected a rebuilt one")
            case.notes.append(f"client connections {lnd['connections_established']}")
    elif name == "race":
        rejects = 0
        for i in (1, 2, 3):
            for host, peer in (("A", "192.0.2.2@o2ib"), ("B", "192.0.2.1@o2ib")):
                obj = case.process(directory, f"race.{i}.{host}")
                case.client(obj, f"race {i} {host}")
                if obj is None:
                    continue
                case.check(obj.get("passed") is True, f"race {i} {host}: the session failed: {obj.get('first_error')}")
                lnd = obj.get("lnd") or {}
                to_peer = [c for c in lnd.get("connections_at_end", []) if c["peer"] == peer]
                case.check(len(to_peer) == 1, f"race {i} {host}: {len(to_peer)} connections to {peer} at the end")
                rejects += lnd.get("rejects_sent", 0)
        case.notes.append(f"one connection each way in 3 of 3 races, {rejects} connection requests rejected")
    elif name == "cm-probe":
        try:
            with open(os.path.join(directory, "cm-probe.A.txt")) as f:
                text = f.read()
        except OSError:
            text = ""
        case.check("rc=0" in text, "perftest (ib_send_lat -R) could not connect A -> B after the faults")
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
    directory, names = args[0], args[1:]
    cases = [judge(directory, name) for name in names]
    header = f"{'fault':18} {'attempted':>9} {'succeeded':>9} {'failed':>7} {'lost':>5} {'bytes verified':>15}  result"
    lines = ["fault suite (two SoftRoCE VMs, verified self-test traffic)", header, "-" * len(header)]
    for c in cases:
        result = "PASS" if not c.problems else "FAIL"
        lines.append(f"{c.name:18} {c.attempted:9} {c.succeeded:9} {c.failed:7} {c.lost:5} {c.bytes_verified:15}  {result}"
                     + (f"  ({'; '.join(c.notes)})" if c.notes else ""))
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
