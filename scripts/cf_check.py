#!/usr/bin/env python3
"""Runs IOOS's compliance-checker (CF 1.8) on trajectory files and fails on what it reports.

Usage: cf_check.py CHECKER FILE [--allow SECTION]...

Errors (its high priorities) always fail. Warnings (medium and low) fail too, except those of
the sections named with --allow: compliance-checker takes a trajectory file with a common time
coordinate (CF 9.3.1's orthogonal multidimensional representation, time(time)) for a mapped
grid once it finds true latitude and longitude, and warns under section 9.1.
"""
import json
import subprocess
import sys


def main(argv):
    if len(argv) < 3:
        sys.exit(__doc__)
    checker, path = argv[1], argv[2]
    allowed = [argv[i + 1] for i, a in enumerate(argv) if a == "--allow"]
    out = subprocess.run(
        [checker, "--test=cf:1.8", "-f", "json", "-o", "-", path],
        capture_output=True,
        text=True,
    )
    try:
        report = json.loads(out.stdout)["cf:1.8"]
    except (ValueError, KeyError):
        sys.exit(f"{path}: compliance-checker gave no report:\n{out.stdout}\n{out.stderr}")
    failures = []
    for level in ("high_priorities", "medium_priorities", "low_priorities"):
        for check in report[level]:
            msgs = check.get("msgs") or []
            if not msgs:
                continue
            if level != "high_priorities" and any(
                check["name"].startswith(f"§{s}") for s in allowed
            ):
                print(f"{path}: allowed ({level.split('_')[0]}): {check['name']}: {msgs[0]} ...")
                continue
            failures += [f"{level.split('_')[0]}: {check['name']}: {m}" for m in msgs]
    print(
        f"{path}: CF 1.8 {report['scored_points']}/{report['possible_points']} points, "
        f"{report['high_count']} errors, {report['medium_count']} warnings"
    )
    if failures:
        sys.exit(f"{path}: " + "\n  ".join(["compliance-checker found:"] + failures))


if __name__ == "__main__":
    main(sys.argv)
