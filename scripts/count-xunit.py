#!/usr/bin/env python3
"""Counts passed, failed and skipped test cases in Swift Testing xUnit files, and checks skips against an allow-list.

Usage:
  count-xunit.py FILE...                          prints "passed failed skipped" (three integers)
  count-xunit.py --skipped FILE...                prints each skipped test as "ID<TAB>why it skipped"
  count-xunit.py --check-skips ALLOWED FILE...    fails (exit 1) if a test skipped that ALLOWED does not list

A test's ID is "Module.Suite/name()" (the form --filter takes), e.g.
"RDMALNDTests.HandshakeDeviceTests/simultaneousConnectsEndWithOneConnection()". The allow-list (scripts/device-skips.txt)
has one test per line, "ID  reason" (the reason is required); blank lines and lines starting with # are ignored.
--check-skips prints every skipped test that is not listed, every listed entry without a reason (both failures),
and every listed test that did not skip (a note: the entry may be stale).
"""
import sys
import xml.etree.ElementTree as ET


def cases(paths):
    for path in paths:
        for case in ET.parse(path).getroot().iter("testcase"):
            yield case


def test_id(case):
    return f"{case.get('classname', '')}/{case.get('name', '')}"


def skipped(paths):
    """[(id, reason)] of every skipped test."""
    found = []
    for case in cases(paths):
        skip = case.find("skipped")
        if skip is not None and case.find("failure") is None and case.find("error") is None:
            reason = (skip.text or skip.get("message") or "").strip()
            found.append((test_id(case), reason))
    return found


def read_allow_list(path):
    """{id: reason} of the allow-list (an entry without a reason has reason "")."""
    allowed = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split(None, 1)
            allowed[parts[0]] = parts[1].strip() if len(parts) > 1 else ""
    return allowed


def main(args):
    if not args:
        sys.stderr.write(__doc__)
        return 2
    if args[0] == "--skipped":
        for name, reason in skipped(args[1:]):
            print(f"{name}\t{reason}")
        return 0
    if args[0] == "--check-skips":
        if len(args) < 3:
            sys.stderr.write(__doc__)
            return 2
        allowed = read_allow_list(args[1])
        found = skipped(args[2:])
        status = 0
        for name, reason in allowed.items():
            if not reason:
                print(f"allow-list entry without a reason: {name}")
                status = 1
        for name, reason in found:
            if name not in allowed:
                print(f"skipped, not in {args[1]}: {name} ({reason or 'no reason given'})")
                status = 1
        names = {name for name, _ in found}
        for name in allowed:
            if name not in names:
                print(f"note: {name} is in {args[1]} but did not skip")
        return status
    passed = failed = skip_count = 0
    for case in cases(args):
        if case.find("failure") is not None or case.find("error") is not None:
            failed += 1
        elif case.find("skipped") is not None:
            skip_count += 1
        else:
            passed += 1
    print(passed, failed, skip_count)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
