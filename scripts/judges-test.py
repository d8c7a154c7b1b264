#!/usr/bin/env python3
"""Tests of the judges of the two-host runs - scripts/fault-summary.py (the fault suite) and scripts/soak-summary.py
(the soak) - on made-up run folders (no VM needed).

Usage: scripts/judges-test.py        (scripts/test.sh runs it; exit status 0 when every test passed)

A made-up run that should pass is judged PASS; then each test breaks one thing the judge must catch (a client
SIGKILLed from outside, a crash after the JSON, lost operations that cancel out across rounds, a fault whose
counters never moved, a failed race, link flaps after which rdma_cm no longer connects or that the client met with
too many connection attempts, failed soak operations, a host that exited non-zero, ...) and checks that the
judge fails it with the right reason.
"""
import copy
import importlib.util
import json
import os
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))


def load_script(name):
    spec = importlib.util.spec_from_file_location(name.replace("-", "_"), os.path.join(HERE, name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fault_summary = load_script("fault-summary")
soak_summary = load_script("soak-summary")

CASES = ["netem-read-pull", "blackout", "link-down", "server-kill", "race", "flaps"]
ZERO = {"sent_pkts": 1000, "rcvd_pkts": 1000, "duplicate_request": 0, "out_of_seq_request": 0, "rcvd_rnr_err": 0,
        "send_rnr_err": 0, "rcvd_seq_err": 0, "ack_deferred": 0, "retry_exceeded_err": 0, "retry_rnr_exceeded_err": 0,
        "completer_retry_err": 0, "send_err": 0, "link_downed": 0, "rdma_sends": 10, "rdma_recvs": 10}


def lnet(handed=100):
    return {"handed_to_lnd": handed, "finalized_ok": handed, "finalized_error": 0, "finalized_twice": 0,
            "unfinalized_at_shutdown": 0, "pending": 0, "exactly_once": True}


def round_(attempted, failed=0, kinds=None):
    return {"attempted": attempted, "succeeded": attempted - failed, "failed": failed, "verified_ops": attempted - failed,
            "verification_failures": 0, "bytes": (attempted - failed) * 65536,
            "error_kinds": kinds or ({"connection closed": failed} if failed else {}), "first_error": None}


def client(rounds, connections=2, rejects=0, peer="192.0.2.2@o2ib"):
    obj = dict(rounds[-1])
    if len(rounds) > 1:
        obj["rounds"] = rounds
        for key in ("attempted", "succeeded", "failed", "verified_ops", "verification_failures", "bytes"):
            obj[key] = sum(r[key] for r in rounds)
    obj["passed"] = all(r["failed"] == 0 for r in rounds)
    obj["lnet"] = lnet()
    obj["lnd"] = {"connections_established": connections, "connections_closed": connections - 1,
                  "rejects_sent": rejects, "connections_at_end": [{"peer": peer, "role": "active", "phase": "established"}]}
    return obj


class Run:
    """A run folder in which every case passes; tests change it, then judge it."""

    def __init__(self, directory):
        self.dir = directory
        for case in CASES:
            for host in "AB":
                self.counters(f"{case}.before", host, {})
                self.counters(f"{case}.after", host, {})
        self.process("netem-read-pull.server", 0, {"verification_failures": 0, "lnet": lnet()})
        self.process("netem-read-pull.client", 1, client([round_(50, failed=3), round_(80)], connections=3))
        self.counters("netem-read-pull.fault-on", "A", {})
        self.counters("netem-read-pull.fault-off", "A", {"completer_retry_err": 7, "rcvd_seq_err": 4})
        self.counters("netem-read-pull.fault-on", "B", {})
        self.counters("netem-read-pull.fault-off", "B", {"out_of_seq_request": 9})
        self.process("blackout.server", 0, {"verification_failures": 0, "lnet": lnet()})
        self.process("blackout.client", 0, client([round_(60)], connections=1))
        for host, moved in (("A", {"completer_retry_err": 3}), ("B", {"completer_retry_err": 2, "duplicate_request": 2})):
            self.counters("blackout.fault-on", host, {})
            self.counters("blackout.fault-off", host, moved)
        self.process("link-down.server", 0, {"verification_failures": 0, "lnet": lnet()})
        self.process("link-down.client", 1, client([round_(40, failed=4), round_(70)]))
        self.counters("link-down.fault-on", "A", {})
        self.counters("link-down.fault-off", "A", {"link_downed": 1, "send_err": 5})
        for case, hosts in (("netem-read-pull", "AB"), ("blackout", "AB"), ("link-down", "A")):
            for host in hosts:   # the counters only grow: after the case as at the end of the fault
                self.copy(f"{case}.fault-off.rxe-{host}.txt", f"{case}.after.rxe-{host}.txt")
        self.process("server-kill.server", 137, None)
        self.process("server-kill.server2", 0, {"verification_failures": 0, "lnet": lnet()})
        self.process("server-kill.client", 1, client([round_(30, failed=4), round_(70)]))
        for i in (1, 2, 3):
            self.process(f"race.{i}.A", 0, client([round_(20)], connections=1, peer="192.0.2.2@o2ib"))
            self.process(f"race.{i}.B", 0, client([round_(20)], connections=1, rejects=1, peer="192.0.2.1@o2ib"))
        # flaps: 5 outages, each costing a few failed attempts (back-off) and one connection that worked
        self.process("flaps.server", 0, {"verification_failures": 0, "lnet": lnet()})
        self.flaps_client(established=6, failed=24)
        self.counters("flaps.fault-on", "A", {})
        self.counters("flaps.fault-off", "A", {"link_downed": 5, "send_err": 12})
        self.copy("flaps.fault-off.rxe-A.txt", "flaps.after.rxe-A.txt")
        self.process("flaps.new", 0, client([round_(16)], connections=1))
        self.write("flaps.probe-A.txt", "ping data: rdma-ping-0: ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`abcdefghijklmnopqr\nrc=0\n")
        self.write("flaps.probe-B.txt", "server DISCONNECT EVENT...\nwait for RDMA_READ_ADV state 10\nrc=0\n")
        for when in ("before", "flapped", "after"):
            self.write(f"flaps.{when}.qp-A.txt", "link rxe0/1 lqpn 1 type GSI state RTS sq-psn 0 comm [ib_core]\n"
                       "link rxe0/1 lqpn 17 type RC state RTS rq-psn 5 sq-psn 9 path-mig-state MIGRATED pdn 3 pid 412 comm lnetctl\n")

    def flaps_client(self, established, failed, per_second=4):
        obj = client([round_(60, failed=9), round_(70)], connections=established)
        obj["lnd"]["connect_attempts_failed"] = failed
        self.process("flaps.client", 1, obj)
        # its log: the failed attempts, `per_second` a second (as many seconds as it takes)
        line = ("2026-12-02T01:02:{:02d}+0000 warning lnetctl: component=o2ib conn=active ni=192.0.2.1@o2ib "
                "peer=192.0.2.2@o2ib [RDMALND] closing: cannot start connecting: the port is down\n")
        self.write("flaps.client.err", "".join(line.format(i // per_second) for i in range(failed))
                   + "2026-12-02T01:02:30+0000 info lnetctl: [RDMALND] closing: work request failed\n"
                   + "lnetctl selftest: 9 of 130 operations failed, not verified: op 15 (slot 2): SEND connection closed\n")

    def process(self, name, rc, obj):
        self.write(name + ".rc", "" if rc is None else f"{rc}\n")
        self.write(name + ".err", "")
        if obj is None:
            self.remove(name + ".json")
        else:
            self.write(name + ".json", json.dumps(obj) + "\n")

    def counters(self, snapshot, host, moved):
        values = dict(ZERO)
        for key, delta in moved.items():
            values[key] += delta
        self.write(f"{snapshot}.rxe-{host}.txt", "".join(f"{k}:{v}\n" for k, v in sorted(values.items())))

    def copy(self, source, target):
        with open(os.path.join(self.dir, source)) as f:
            self.write(target, f.read())

    def json(self, name):
        with open(os.path.join(self.dir, name + ".json")) as f:
            return json.load(f)

    def edit(self, name, change):
        obj = self.json(name)
        change(obj)
        self.write(name + ".json", json.dumps(obj) + "\n")

    def write(self, name, text):
        with open(os.path.join(self.dir, name), "w") as f:
            f.write(text)

    def remove(self, name):
        try:
            os.remove(os.path.join(self.dir, name))
        except FileNotFoundError:
            pass

    def judge(self, case):
        return fault_summary.judge(self.dir, case)


class FaultSuiteJudgeTests(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.run = Run(self.tmp.name)

    def tearDown(self):
        self.tmp.cleanup()

    def failsWith(self, case, *fragments):
        judged = self.run.judge(case)
        self.assertTrue(judged.problems, f"{case} passed, expected a failure mentioning {fragments}")
        text = "\n".join(judged.problems)
        for fragment in fragments:
            self.assertIn(fragment, text)
        return judged

    def test_the_made_up_run_passes(self):
        for case in CASES:
            judged = self.run.judge(case)
            self.assertEqual(judged.problems, [], case)
        notes = self.run.judge("netem-read-pull").notes
        self.assertIn("rxe during netem: A: retries 7, seq-NAKs 4; B: out-of-seq 9", notes)
        self.assertIn("20 loss/reorder events during netem, 0 after it", notes)
        race = self.run.judge("race")
        self.assertIn("one connection each way and both sessions passed in 3 of 3 races", race.notes[0])

    # item 3: exit statuses
    def test_a_client_killed_from_outside_without_json_fails(self):
        self.run.process("netem-read-pull.client", 137, None)
        self.failsWith("netem-read-pull", "exit 137 (killed by SIGKILL, not by the case)", "no JSON output")

    def test_a_crash_after_the_json_fails(self):
        obj = self.run.json("blackout.client")
        self.run.process("blackout.client", 134, obj)
        self.failsWith("blackout", "exit 134 (died of signal 6)", "after printing its JSON")

    def test_a_server_crash_fails(self):
        obj = self.run.json("link-down.server")
        self.run.process("link-down.server", 139, obj)
        self.failsWith("link-down", "link-down.server: exit 139")

    def test_a_client_that_did_not_exit_fails(self):
        self.run.remove("race.2.B.rc")
        self.failsWith("race", "race.2.B: did not exit")

    def test_the_exit_status_must_match_passed(self):
        self.run.edit("netem-read-pull.client", lambda o: o.update(passed=True))
        self.failsWith("netem-read-pull", "exit 1 but its JSON says passed=True")

    def test_the_killed_server_must_have_died_of_sigkill(self):
        self.run.process("server-kill.server", 0, {"verification_failures": 0, "lnet": lnet()})
        self.failsWith("server-kill", "server-kill.server: exit 0, expected 137")

    def test_a_fault_that_failed_nothing_fails_link_down(self):
        self.run.process("link-down.client", 0, client([round_(40), round_(70)]))
        self.failsWith("link-down", "the fault failed no operation",
                       "link-down.client: exit 0 (unexpected status), expected 1")

    # item 4: accounting, nothing clamped
    def test_lost_operations_that_cancel_out_across_rounds_fail(self):
        def change(o):
            o["rounds"][0]["attempted"] += 2   # two lost in round 1 ...
            o["rounds"][1]["attempted"] -= 2   # ... and two too many counted in round 2: the sums still agree
        self.run.edit("link-down.client", change)
        judged = self.failsWith("link-down", "link-down.client round 1: attempted 42 != succeeded 36 + failed 4",
                                "link-down.client round 2: attempted 68 != succeeded 70 + failed 0")
        self.assertEqual(judged.lost_ops, 4)

    def test_totals_that_are_not_the_sum_of_the_rounds_fail(self):
        self.run.edit("server-kill.client", lambda o: o.update(attempted=o["attempted"] + 1, succeeded=o["succeeded"] + 1))
        self.failsWith("server-kill", "total attempted 101 != 100, the sum of its rounds")

    def test_more_finalizations_than_messages_fail(self):
        self.run.edit("blackout.server", lambda o: o["lnet"].update(finalized_ok=o["lnet"]["finalized_ok"] + 3))
        judged = self.failsWith("blackout", "100 messages handed to the LND but 103 finalized")
        self.assertEqual(judged.lost_messages, 3)

    def test_unverified_successes_fail(self):
        self.run.edit("race.1.A", lambda o: o.update(verified_ops=o["verified_ops"] - 1))
        self.failsWith("race", "succeeded but 19 were verified")

    # item 5: the fault must show
    def test_netem_whose_counters_did_not_move_fails(self):
        for host in "AB":
            self.run.counters("netem-read-pull.fault-off", host, {})
            self.run.counters("netem-read-pull.after", host, {})
        self.failsWith("netem-read-pull", "netem showed no effect: 0 loss/reorder events")

    def test_netem_with_a_spurious_retry_only_fails(self):
        # rxe's retry timer fires now and then without a fault: one retry is no evidence
        for host in "AB":
            for snapshot in ("fault-off", "after"):
                self.run.counters(f"netem-read-pull.{snapshot}", host, {"completer_retry_err": 1} if host == "A" else {})
        self.failsWith("netem-read-pull", "netem showed no effect: 1 loss/reorder events")

    def test_netem_that_moved_no_more_than_without_it_fails(self):
        for host in "AB":
            self.run.counters("netem-read-pull.after", host, {"completer_retry_err": 14, "rcvd_seq_err": 8}
                              if host == "A" else {"out_of_seq_request": 18})
        self.failsWith("netem-read-pull", "and more than the 20 after it")

    def test_netem_that_dropped_packets_is_evidence_enough(self):
        # Few rxe events (the traffic of that case resent little) but netem's own statistics show drops: it hit.
        for host in "AB":
            self.run.counters("netem-read-pull.fault-off", host, {"completer_retry_err": 1} if host == "A" else {})
            self.run.counters("netem-read-pull.after", host, {"completer_retry_err": 1} if host == "A" else {})
        self.run.write("netem-read-pull.netem-A.txt", "qdisc netem 8001: root refcnt 2 limit 1000 delay 5ms  2ms loss 1%\n"
                       " Sent 912345 bytes 1201 pkt (dropped 13, overlimits 0 requeues 0)\n")
        self.run.write("netem-read-pull.netem-B.txt", " Sent 812345 bytes 1101 pkt (dropped 9, overlimits 0 requeues 0)\n")
        case = self.run.judge("netem-read-pull")
        self.assertEqual(case.problems, [])
        self.assertIn("netem dropped 22 packets (A: 13, B: 9)", case.notes)

    def test_netem_that_dropped_nothing_and_moved_no_counter_fails(self):
        for host in "AB":
            self.run.counters("netem-read-pull.fault-off", host, {})
            self.run.counters("netem-read-pull.after", host, {})
            self.run.write(f"netem-read-pull.netem-{host}.txt", " Sent 912345 bytes 1201 pkt (dropped 0, overlimits 0 requeues 0)\n")
        self.failsWith("netem-read-pull", "netem showed no effect: 0 loss/reorder events", "netem dropped 0 packets")

    def test_netem_moved_only_outside_the_fault_window_fails(self):
        for host in "AB":
            self.run.counters("netem-read-pull.fault-off", host, {})
            self.run.counters("netem-read-pull.after", host, {"completer_retry_err": 5})
        self.failsWith("netem-read-pull", "netem showed no effect: 0 loss/reorder events")

    def test_counters_that_went_backwards_fail(self):
        self.run.counters("blackout.after", "B", {})
        self.failsWith("blackout", "rxe counters of B went backwards from fault-off to after (completer_retry_err, duplicate_request)")

    def test_missing_counters_fail(self):
        self.run.remove("netem-read-pull.fault-on.rxe-B.txt")
        self.failsWith("netem-read-pull", "no rxe counters saved (netem-read-pull.fault-on.rxe-B.txt)")

    def test_netem_with_failures_after_the_fault_fails(self):
        self.run.process("netem-read-pull.client", 1, client([round_(50, failed=3), round_(80, failed=1)], connections=3))
        self.failsWith("netem-read-pull", "after the fault: 1 of 80 failed")

    def test_a_blackout_without_retransmissions_fails(self):
        for host in "AB":
            for snapshot in ("fault-off", "after"):
                self.run.counters(f"blackout.{snapshot}", host, {"duplicate_request": 2})
        self.failsWith("blackout", "the blackout showed no effect: 0 retransmissions")

    def test_a_blackout_with_a_spurious_retry_only_fails(self):
        for snapshot in ("fault-off", "after"):
            self.run.counters(f"blackout.{snapshot}", "A", {"completer_retry_err": 1})
            self.run.counters(f"blackout.{snapshot}", "B", {})
        self.failsWith("blackout", "the blackout showed no effect: 1 retransmissions")

    def test_a_link_down_the_port_never_saw_fails(self):
        for snapshot in ("fault-off", "after"):
            self.run.counters(f"link-down.{snapshot}", "A", {"send_err": 5})
        self.failsWith("link-down", "A's rxe port never went down")

    def test_a_race_without_a_reject_fails(self):
        for i in (1, 2, 3):
            self.run.edit(f"race.{i}.B", lambda o: o["lnd"].update(rejects_sent=0))
        self.failsWith("race", "no race happened")

    def test_a_failed_race_is_not_reported_as_three_of_three(self):
        self.run.edit("race.2.A", lambda o: o["lnd"]["connections_at_end"].append(copy.deepcopy(o["lnd"]["connections_at_end"][0])))
        judged = self.failsWith("race", "race 2 A: 2 connections to 192.0.2.2@o2ib at the end")
        self.assertIn("in 2 of 3 races", judged.notes[0])

    def test_the_lower_nid_must_not_reject(self):
        self.run.edit("race.1.A", lambda o: o["lnd"].update(rejects_sent=1))
        self.failsWith("race", "A (the lower NID) rejected 1 connection requests")

    # the flaps case
    def test_flaps_notes_the_evidence(self):
        notes = self.run.judge("flaps").notes
        self.assertIn("client connection attempts 30 (6 established, 24 failed; at most 50 allowed), closed 5", notes)
        self.assertIn("rxe around the flaps: A: link-down 5, send-errors 12", notes)
        self.assertIn("the rdma_cm probe (rping) connected A -> B after the flaps", notes)
        self.assertIn("A's GSI QP (QP1): before RTS, flapped RTS, after RTS", notes)

    def test_flaps_whose_probe_timed_out_fail(self):
        self.run.write("flaps.probe-A.txt", "cma event RDMA_CM_EVENT_REJECTED, error 8\nconnect error -1\nrc=255\n")
        self.failsWith("flaps", "(rping) client on A exited 255: rdma_cm cannot connect A -> B after the flaps")

    def test_flaps_whose_probe_server_never_finished_fail(self):
        self.run.write("flaps.probe-B.txt", "")
        self.failsWith("flaps", "probe (rping) server on B did not finish")

    def test_flaps_without_a_probe_fail(self):
        self.run.remove("flaps.probe-A.txt")
        self.failsWith("flaps", "client on A did not finish")

    def test_flaps_whose_new_session_failed_fail(self):
        self.run.process("flaps.new", 1, client([round_(16, failed=16, kinds={"unreachable": 16})], connections=0))
        self.failsWith("flaps", "flaps.new: exit 1 (unexpected status), expected 0", "flaps.new: the self-test failed",
                       "a new process from A could not work after the flaps")

    def test_flaps_whose_new_session_could_not_start_fail(self):
        self.run.process("flaps.new", 1, {"error": "round 1: no server at 12345-192.0.2.2@o2ib", "ok": False})
        self.failsWith("flaps", "flaps.new: failed before reporting", "a new process from A could not work after the flaps")

    def test_flaps_with_too_many_connection_attempts_fail(self):
        self.run.flaps_client(established=6, failed=91)   # the old loop: ~100 attempts, no back-off
        self.failsWith("flaps", "the client made 97 connection attempts (6 established, 91 failed) for 5 flaps: "
                                "more than 50 (10 per flap): no back-off?")

    def test_flaps_with_a_burst_of_attempts_fail(self):
        # few in all, but 16 in one second: the back-off did not hold
        self.run.flaps_client(established=6, failed=20, per_second=16)
        self.failsWith("flaps", "the client logged 16 failed connection attempts in one second (2026-12-02T01:02:00): "
                                "more than 8: no back-off?")

    def test_flaps_count_only_failed_attempts_per_second(self):
        # the info line of an established connection's close does not count; 8 in a second is allowed
        self.run.flaps_client(established=6, failed=24, per_second=8)
        case = self.run.judge("flaps")
        self.assertEqual(case.problems, [])
        self.assertIn("failed attempts in the client's log: 24 in 3 seconds, at most 8 in one (8 allowed)", case.notes)

    def test_flaps_at_the_bound_pass(self):
        self.run.flaps_client(established=5, failed=45)
        self.assertEqual(self.run.judge("flaps").problems, [])

    def test_flaps_the_port_did_not_see_fail(self):
        for snapshot in ("fault-off", "after"):
            self.run.counters(f"flaps.{snapshot}", "A", {"link_downed": 3})
        self.failsWith("flaps", "A's rxe port went down 3 times (link_downed), not once per flap (5)")

    def test_flaps_that_failed_nothing_fail(self):
        obj = client([round_(60), round_(70)], connections=6)
        self.run.process("flaps.client", 0, obj)
        self.failsWith("flaps", "the fault failed no operation")

    def test_flaps_with_failures_after_them_fail(self):
        obj = client([round_(60, failed=9), round_(70, failed=2)], connections=6)
        self.run.process("flaps.client", 1, obj)
        self.failsWith("flaps", "after the fault: 2 of 70 failed")

    def test_flaps_that_broke_the_gsi_qp_fail(self):
        self.run.write("flaps.after.qp-A.txt", "link rxe0/1 lqpn 1 type GSI state ERR sq-psn 0 comm [ib_core]\n")
        self.failsWith("flaps", "A's GSI QP (QP1, rdma_cm's MADs) is in state ERR at the end")

    def test_the_table_says_fail(self):
        self.run.process("netem-read-pull.client", 137, None)
        out = os.path.join(self.tmp.name, "table.txt")
        sys.argv = ["fault-summary.py", self.tmp.name, *CASES, "--text", out]
        self.assertEqual(fault_summary.main(), 1)
        with open(out) as f:
            table = f.read()
        self.assertIn("fault suite: 5 of 6 cases passed", table)


def soak_client(attempted, failed=0, kinds=None):
    obj = round_(attempted, failed, kinds)
    obj.update(passed=failed == 0, lnet=lnet(), lnd={"connections_established": 1, "timeouts": 0},
               mb_per_s=12.5, latency_us={"p99": 2500.0})
    return obj


class SoakRun:
    """A soak run folder that passes: 6 clients and a server per host, every process exited 0."""

    def __init__(self, directory):
        self.out = os.path.join(directory, "soak")
        os.makedirs(self.out)
        for host in "AB":
            for i in range(6):
                self.client(host, i, soak_client(1000 + i))
            self.write(f"{host}.serve.json", json.dumps({"operations": 6015, "bytes": 1 << 30, "verification_failures": 0,
                                                        "lnet": lnet(), "max_rss_kib": 200000}))
            self.write(f"{host}.serve.rc", "0\n")
            self.write(f"{host}.status", "0\n")
            for label in ("start", "end"):
                self.write(f"{host}.rss-{label}.txt", "".join(f"{100 + i} 50000\n" for i in range(7)))

    def client(self, host, i, obj, rc=None):
        self.write(f"{host}.client{i}.json", json.dumps(obj))
        self.write(f"{host}.client{i}.rc", f"{(0 if obj.get('passed') else 1) if rc is None else rc}\n")

    def write(self, name, text):
        with open(os.path.join(self.out, name), "w") as f:
            f.write(text)

    def judge(self, allowed=0, harness=0):
        with open(os.devnull, "w") as devnull:
            stdout, sys.stdout = sys.stdout, devnull
            try:
                status = soak_summary.main([self.out, "600", str(allowed), str(harness)])
            finally:
                sys.stdout = stdout
        with open(os.path.join(os.path.dirname(self.out), "soak.json")) as f:
            return status, json.load(f)


class SoakJudgeTests(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.run = SoakRun(self.tmp.name)

    def tearDown(self):
        self.tmp.cleanup()

    def failsWith(self, *fragments, allowed=0, harness=0):
        status, report = self.run.judge(allowed, harness)
        self.assertEqual(status, 1, "the soak passed")
        self.assertFalse(report["passed"])
        text = "\n".join(report["problems"])
        for fragment in fragments:
            self.assertIn(fragment, text)

    def test_the_made_up_soak_passes(self):
        status, report = self.run.judge()
        self.assertEqual((status, report["problems"]), (0, []))
        self.assertEqual(report["total"]["attempted"], 2 * sum(1000 + i for i in range(6)))

    def test_failed_operations_fail_the_soak_at_the_default_settings(self):
        self.run.client("B", 3, soak_client(500, failed=2, kinds={"timed out": 2}))
        self.run.write("B.status", "1\n")
        self.failsWith("2 operations failed with an error; SOAK_ALLOWED_ERRORS=0", harness=1)

    def test_every_operation_failing_fails_the_soak(self):
        for host in "AB":
            for i in range(6):
                self.run.client(host, i, soak_client(300, failed=300))
            self.run.write(f"{host}.status", "1\n")
        self.failsWith("3600 operations failed with an error", "host A: exit 1", harness=1)

    def test_allowed_errors_are_allowed_and_no_more(self):
        self.run.client("A", 0, soak_client(500, failed=2))
        self.run.write("A.status", "1\n")
        status, report = self.run.judge(allowed=2, harness=1)
        self.assertEqual((status, report["problems"]), (0, []))
        self.failsWith("2 operations failed with an error; SOAK_ALLOWED_ERRORS=1", allowed=1, harness=1)

    def test_a_host_that_exited_non_zero_fails(self):
        self.run.write("A.status", "1\n")
        self.failsWith("host A: exit 1", harness=1)

    def test_a_host_that_did_not_finish_fails(self):
        os.remove(os.path.join(self.run.out, "B.status"))
        self.failsWith("host B: did not finish its command", harness=1)

    def test_a_server_that_crashed_fails(self):
        self.run.write("A.serve.rc", "134\n")
        self.failsWith("A server: exit 134, expected 0")

    def test_a_client_killed_after_its_json_fails(self):
        self.run.client("B", 5, soak_client(900), rc=137)
        self.failsWith("B client 5 (write 1MiB-16MiB x4): exit 137 with passed=True")

    def test_lost_operations_fail(self):
        obj = soak_client(900)
        obj["attempted"] += 3
        self.run.client("A", 2, obj)
        self.failsWith("A client 2 (read 64KiB-1MiB x28): attempted 903 != succeeded 900 + failed 0")

    def test_a_harness_timeout_fails(self):
        self.failsWith("the two-host run ended with status 124", harness=124)


if __name__ == "__main__":
    suite = unittest.defaultTestLoader.loadTestsFromModule(sys.modules[__name__])
    result = unittest.TextTestRunner(verbosity=1).run(suite)
    bad = len(result.failures) + len(result.errors)
    # The last line, for scripts/test.sh.
    print(f"judges: {result.testsRun - bad} passed, {bad} failed")
    sys.exit(0 if result.wasSuccessful() else 1)
