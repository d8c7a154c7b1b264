#!/usr/bin/env python3
"""bench-summary.py - the table (or JSON) of one scripts/bench.sh run.

Usage: scripts/bench-summary.py RESULTS-FOLDER [--vm-status N] [--json]

Reads the raw outputs bench.sh left in RESULTS-FOLDER (perftest's and ucx_perftest's client output, lnetctl's
JSON) and prints each LND figure beside perftest's and UCX's, with the ratios LND / perftest and LND / UCX
(bandwidth: LND / peer; latency: peer / LND; higher is better). Figures are medians over the repetitions; each
ratio is the median of the per-repetition ratios (perftest, UCX and the LND ran back to back in each repetition).
Exits 1 if the VM run failed, a self-test or ping failed, or a row has no figure.
"""
import argparse
import json
import os
import re
import statistics
import sys

SIZES = [4096, 65536, 1048576]
# Targets of the LND / perftest ratio (issue "the data path, rebuilt").
BANDWIDTH_TARGETS = {4096: 0.6, 65536: 0.9, 1048576: 0.95}
# (row, lnetctl op, mode, perftest tool, ucx test)
BULK = [("get", "read", "pull", "ib_read_bw", "ucp_get"), ("get", "read", "push", "ib_write_bw", "ucp_put_bw"),
        ("put", "write", "pull", "ib_read_bw", "ucp_get"), ("put", "write", "push", "ib_write_bw", "ucp_put_bw")]


def label(size):
    return f"{size >> 20}MiB" if size >= 1 << 20 else f"{size >> 10}KiB" if size >= 1024 else f"{size}B"


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (ValueError, OSError):
        return None


class Run:
    def __init__(self, out):
        self.out = out
        self.failures = []
        self.reps = sorted({int(m.group(1)) for f in os.listdir(out)
                            for m in [re.search(r"-(\d+)\.client\.txt$", f)] if m})

    def perftest(self, tool, size, rep):
        """BW average [MB/sec] (bw tools) or t_typical [usec] (lat tools) of one run."""
        path = os.path.join(self.out, f"{tool}-{size}-{rep}.client.txt")
        if not os.path.exists(path):
            return None
        for line in open(path, errors="replace"):
            fields = line.split()
            if len(fields) >= 5 and fields[0] == str(size) and fields[1].isdigit():
                try:
                    return float(fields[3] if tool.endswith("_bw") else fields[4])
                except ValueError:
                    return None
        return None

    def ucx(self, test, size, rep):
        """ucx_perftest's final line: MB/s (overall bandwidth) for ucp_get/ucp_put_bw, us (p50 one-way) for tag_lat."""
        path = os.path.join(self.out, f"{test}-{size}-{rep}.client.txt")
        if not os.path.exists(path):
            return None
        for line in open(path, errors="replace"):
            fields = line.split()
            # Final: iterations, latency p50, average, overall, bandwidth average, overall, rate average, overall
            if len(fields) >= 9 and fields[0] == "Final:":
                try:
                    return float(fields[2] if test == "tag_lat" else fields[6])
                except ValueError:
                    return None
        return None

    def lnd(self, name, rep):
        return load(os.path.join(self.out, f"lnd-{name}-{rep}.json"))


def bulk_rows(run):
    rows, rss = [], []
    for size in SIZES:
        for name, op, mode, tool, test in BULK:
            lnd_values, base_values, ucx_values, ratios, ratios_ucx, cpu, p50 = [], [], [], [], [], [], []
            verified = True
            for rep in run.reps:
                result = run.lnd(f"{op}-{mode}-{size}", rep)
                base, ucx = run.perftest(tool, size, rep), run.ucx(test, size, rep)
                base_values.append(base)
                ucx_values.append(ucx)
                if result is None:
                    run.failures.append(f"{name}-{mode}-{label(size)} rep {rep}: no result")
                    continue
                rss += [result.get("max_rss_kib") or 0, (result.get("server") or {}).get("max_rss_kib") or 0]
                if "error" in result or result.get("errors"):
                    run.failures.append(f"{name}-{mode}-{label(size)} rep {rep}: {result.get('error') or result.get('first_error')}")
                    continue
                verified = verified and bool(result.get("verified"))
                lnd_values.append(result["mb_per_s"])
                p50.append(result["latency_us"]["p50"])
                if base:
                    ratios.append(result["mb_per_s"] / base)
                if ucx:
                    ratios_ucx.append(result["mb_per_s"] / ucx)
                if result.get("bytes"):
                    seconds = (result.get("cpu_s") or 0) + ((result.get("server") or {}).get("cpu_s") or 0)
                    cpu.append(seconds / (result["bytes"] / 2**30))
            rows.append({
                "name": f"{name}-{mode}-{label(size)}", "unit": "MB/s", "lnd": median(lnd_values),
                "perftest": median(base_values), "perftest_tool": tool, "ucx": median(ucx_values), "ucx_test": test,
                "ratio": median(ratios), "ratio_ucx": median(ratios_ucx), "target": BANDWIDTH_TARGETS.get(size),
                "ratios": [round(r, 3) for r in ratios], "cpu_s_per_gib": median(cpu), "latency_p50_us": median(p50),
                "verified": verified and bool(lnd_values),
            })
    return rows, rss


def ping_row(run, name, lnd_name, tool, ucx_test, target):
    halves, bases, ucxs, ratios, ratios_ucx = [], [], [], [], []
    for rep in run.reps:
        result = run.lnd(lnd_name, rep)
        base = run.perftest(tool, 8, rep)
        ucx = run.ucx(ucx_test, 8, rep) if ucx_test else None
        bases.append(base)
        ucxs.append(ucx)
        if result is None:
            run.failures.append(f"{lnd_name} rep {rep}: no result")
            continue
        if result.get("errors"):
            run.failures.append(f"{lnd_name} rep {rep}: {result.get('errors')} errors ({result.get('first_error')})")
        if result.get("received"):
            half = result["rtt_us"]["p50"] / 2
            halves.append(half)
            if base:
                ratios.append(base / half)
            if ucx:
                ratios_ucx.append(ucx / half)
    return {"name": name, "unit": "us", "lnd": median(halves), "perftest": median(bases), "perftest_tool": tool,
            "ucx": median(ucxs), "ucx_test": ucx_test, "ratio": median(ratios), "ratio_ucx": median(ratios_ucx),
            "target": target, "ratios": [round(r, 4) for r in ratios], "verified": None}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out")
    parser.add_argument("--vm-status", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    run = Run(args.out)
    setup = load(os.path.join(args.out, "setup.json")) or {}
    rows, rss = bulk_rows(run)
    rows.append(ping_row(run, "ping-rtt/2-8B-events", "ping-events", "ib_send_lat_events", None, 0.8))
    rows.append(ping_row(run, "ping-rtt/2-8B-busy", "ping-busy", "ib_send_lat", "tag_lat", 0.7))
    for row in rows:
        for key in ("lnd", "perftest", "ucx", "ratio", "ratio_ucx", "cpu_s_per_gib", "latency_p50_us"):
            if isinstance(row.get(key), float):
                row[key] = round(row[key], 3 if key.startswith("ratio") or key == "cpu_s_per_gib" else 2)

    cpu_4k = [r["cpu_s_per_gib"] for r in rows if r["name"].endswith("-4KiB") and r.get("cpu_s_per_gib") is not None]
    cpu_all = [r["cpu_s_per_gib"] for r in rows if r.get("cpu_s_per_gib") is not None]
    verified = setup.get("verify", False) and all(r["verified"] for r in rows if r["verified"] is not None)
    summary = {
        "rows": rows,
        "repeats": len(run.reps),
        "verified": verified,
        "clocksource": setup.get("clocksource"),
        "cpu_s_per_gib_4KiB_median": round(statistics.median(cpu_4k), 3) if cpu_4k else None,
        "cpu_s_per_gib_median": round(statistics.median(cpu_all), 3) if cpu_all else None,
        "peak_rss_kib": max(rss) if rss else None,
        "failures": run.failures,
        "vm_status": args.vm_status,
        "raw": args.out,
        "notes": "MB/s = 2^20 bytes/s (perftest's unit). Each ratio is the median over repetitions of the ratio within a "
                 "repetition (perftest, UCX and the LND run back to back). ratio = LND / perftest, ratio_ucx = LND / UCX "
                 "for bandwidth; for latency the peer's figure over the LND's (ping p50 RTT / 2). The events ping row "
                 "compares with ib_send_lat -e (sleeping on completion events), the busy row (LND_POLL=busy) with "
                 "ib_send_lat (busy polling) and UCX tag_lat. cpu = client + server lnetctl CPU seconds per GiB moved.",
    }
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    else:
        def cell(v, fmt="{:.1f}"):
            return "-" if v is None else fmt.format(v)
        print(f"{'name':<22} {'LND':>8} {'perftest':>9} {'UCX':>8} {'unit':>5}  {'vs perftest':<19} {'ratio':>6} "
              f"{'target':>6} {'vs UCX':<11} {'ratio':>6} {'cpu s/GiB':>9}")
        for r in rows:
            mark = "" if r["ratio"] is None or r["target"] is None else ("  ok" if r["ratio"] >= r["target"] else "  MISS")
            print(f"{r['name']:<22} {cell(r['lnd']):>8} {cell(r['perftest']):>9} {cell(r['ucx']):>8} {r['unit']:>5}  "
                  f"{r['perftest_tool']:<19} {cell(r['ratio'], '{:.2f}'):>6} {cell(r['target'], '{:.2f}'):>6} "
                  f"{r['ucx_test'] or '-':<11} {cell(r['ratio_ucx'], '{:.2f}'):>6} "
                  f"{cell(r.get('cpu_s_per_gib'), '{:.2f}'):>9}{mark}")
        print(f"repetitions: {len(run.reps)}; guest clocksource: {setup.get('clocksource', '?')}; peak RSS of the lnetctl "
              f"processes: {cell(summary['peak_rss_kib'] and summary['peak_rss_kib'] / 1024)} MiB; median CPU (client + "
              f"server) per GiB at 4 KiB: {cell(summary['cpu_s_per_gib_4KiB_median'], '{:.2f}')} s, all sizes: "
              f"{cell(summary['cpu_s_per_gib_median'], '{:.2f}')} s")
        print("self-test figures: " + ("all from verified traffic (--verify)" if verified
                                       else "NOT all verified (BENCH_VERIFY=0, or a run did not verify)"))
        for failure in run.failures:
            print(f"failure: {failure}")
        print(f"raw results: {args.out}")
    missing = [r["name"] for r in rows if r["lnd"] is None or r["perftest"] is None]
    sys.exit(1 if args.vm_status or run.failures or missing else 0)


if __name__ == "__main__":
    main()
