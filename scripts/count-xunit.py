#!/usr/bin/env python3
"""Counts passed, failed and skipped test cases in Swift Testing xUnit files.

Usage: count-xunit.py FILE...   prints "passed failed skipped" (three integers).
"""
import sys
import xml.etree.ElementTree as ET

passed = failed = skipped = 0
for path in sys.argv[1:]:
    for case in ET.parse(path).getroot().iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            failed += 1
        elif case.find("skipped") is not None:
            skipped += 1
        else:
            passed += 1
print(passed, failed, skipped)
