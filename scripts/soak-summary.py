#!/usr/bin/env python3
"""Judges a scripts/soak.sh run and prints its report.

Usage: soak-summary.py OUT DURATION ALLOWED_ERRORS HARNESS_STATUS

OUT holds, per host H (A, B): H.clientI.json/.err/.rc (I = 0-5, the six self-test clients), H.serve.json/.err/.rc,
H.status (the host command's exit status, written at its end), H.rss-start.txt / H.rss-end.txt. HARNESS_STATUS is
softroce-2host.sh's exit status. Writes OUT/../soak.json. Exit status 0 when the soak passed (the rule is in
scripts/soak.sh: every operation must succeed unless ALLOWED_ERRORS says otherwise, every process and host exits
with the status it should, nothing lost, everything verified and finalized exactly once).
"""
import json
import os
import sys


def main(argv):
    out, duration, allowed, harness = argv[0], int(argv[1]), int(argv[2]), int(argv[3])
    classes = ["read 1B-64KiB x224", "write 1B-64KiB x224", "read 64KiB-1MiB x28", "write 64KiB-1MiB x28",
               "read 1MiB-16MiB x4", "write 1MiB-16MiB x4"]
    total = {"attempted": 0, "succeeded": 0, "failed": 0, "bytes_verified": 0, "lost": 0}
    problems = []
    rows = []

    def read_rc(name):
        try:
            text = open(os.path.join(out, name)).read().strip()
            return int(text) if text else None
        except (OSError, ValueError):
            return None

    def accounting(who, o):
        acct = o.get("lnet") or {}
        if not acct:
            problems.append(f"{who}: no message accounting")
        elif acct.get("exactly_once") is not True:
            problems.append(f"{who}: messages not finalized exactly once: {acct}")

    host_failed = {"A": 0, "B": 0}
    for host in "AB":
        for i, name in enumerate(classes):
            who = f"{host} client {i} ({name})"
            rc = read_rc(f"{host}.client{i}.rc")
            try:
                o = json.load(open(os.path.join(out, f"{host}.client{i}.json")))
            except (OSError, ValueError):
                rows.append(f"{host} {name:22} no result (exit {rc})"); problems.append(f"{who}: no JSON (exit {rc})"); continue
            if "error" in o and o.get("ok") is False:
                rows.append(f"{host} {name:22} failed: {o['error']} (exit {rc})"); problems.append(f"{who}: {o['error']}"); continue
            difference = o["attempted"] - o["succeeded"] - o["failed"]
            if difference != 0:
                problems.append(f"{who}: attempted {o['attempted']} != succeeded {o['succeeded']} + failed {o['failed']}")
            if o["attempted"] == 0:
                problems.append(f"{who}: no operation ran")
            accounting(who, o)
            verified = o["verified_ops"] == o["succeeded"] and o["verification_failures"] == 0
            if not verified:
                problems.append(f"{who}: {o['verified_ops']} of {o['succeeded']} successes verified, "
                                f"{o['verification_failures']} verification failures")
            if rc not in (0, 1) or (rc == 0) != (o.get("passed") is True):
                problems.append(f"{who}: exit {rc} with passed={o.get('passed')} (expected 0 when passed, else 1)")
            host_failed[host] += o["failed"]
            total["attempted"] += o["attempted"]; total["succeeded"] += o["succeeded"]; total["failed"] += o["failed"]
            total["lost"] += abs(difference)
            if verified: total["bytes_verified"] += o["bytes"]
            lnd = o.get("lnd") or {}
            errors = ", ".join(f"{k} x{v}" for k, v in sorted(o["error_kinds"].items()))
            rows.append(f"{host} {name:22} {o['attempted']:7} ops {o['failed']:4} failed {o['mb_per_s']:6.1f} MB/s "
                        f"p99 {o['latency_us']['p99'] / 1000:8.1f} ms  verified {str(verified):5} "
                        f"connections {lnd.get('connections_established')} timeouts {lnd.get('timeouts')}  exit {rc}"
                        + (f"  errors: {errors}" if errors else ""))
    def rss(host, label):
        try:
            return [int(line.split()[1]) for line in open(os.path.join(out, f"{host}.rss-{label}.txt"))]
        except OSError:
            return []
    print(f"soak: {duration} s, 512 in flight each way, sizes 1 B-16 MiB")
    print("\n".join(rows))
    mem = {}
    for host in "AB":
        start, end = rss(host, "start"), rss(host, "end")
        mem[host] = {"start_kib": start, "end_kib": end}
        print(f"{host} RSS KiB (server, 6 clients) start {start} end {end}; "
              f"sum {sum(start) // 1024} -> {sum(end) // 1024} MiB")
    for host in "AB":
        rc = read_rc(f"{host}.serve.rc")
        try:
            s = json.load(open(os.path.join(out, f"{host}.serve.json")))
            print(f"{host} server: {s['operations']} operations, {s['bytes']} bytes served, {s['verification_failures']} "
                  f"verification failures, exactly once {s['lnet']['exactly_once']}, max RSS {s['max_rss_kib'] // 1024} MiB, exit {rc}")
            if s["verification_failures"] != 0:
                problems.append(f"{host} server: {s['verification_failures']} verification failures")
            accounting(f"{host} server", s)
        except (OSError, ValueError, KeyError):
            print(f"{host} server: no result"); problems.append(f"{host} server: no JSON (exit {rc})")
        if rc != 0:
            problems.append(f"{host} server: exit {rc}, expected 0")
        status = read_rc(f"{host}.status")
        # A host exits 1 when one of its processes did; that is allowed only for clients whose failures are allowed.
        if status is None:
            problems.append(f"host {host}: did not finish its command (no exit status)")
        elif status != 0 and not (allowed > 0 and host_failed[host] > 0 and status == 1):
            problems.append(f"host {host}: exit {status}")
    if harness not in (0, 1) or (harness == 1 and allowed == 0):
        problems.append(f"the two-host run ended with status {harness}")
    if total["failed"] > allowed:
        problems.append(f"{total['failed']} operations failed with an error; SOAK_ALLOWED_ERRORS={allowed}")
    ok = not problems
    print(f"total: {total['attempted']} attempted, {total['succeeded']} succeeded, {total['failed']} failed "
          f"(allowed {allowed}), {total['lost']} lost, {total['bytes_verified']} bytes verified "
          f"({total['bytes_verified'] / 2**30:.2f} GiB)")
    for p in problems:
        print(f"  FAIL: {p}")
    json.dump({"duration_s": duration, "total": total, "allowed_errors": allowed, "rows": rows, "memory": mem,
               "problems": problems, "passed": ok},
              open(os.path.join(os.path.dirname(out), "soak.json"), "w"), indent=1)
    print("soak:", "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
