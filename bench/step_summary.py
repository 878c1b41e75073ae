#!/usr/bin/env python3
"""Sums a server's debug step lines (LLMSERVE_LOG_LEVEL=debug): the steps that decode exactly N
sequences, their mean time per phase (scheduling, inputs, forward launch, sampling, outputs), and the
outputs by quarter of the run.  Usage: step_summary.py LOG N [FIRST_LINE]  (lines before FIRST_LINE,
1-based, are skipped: one server's log over several runs)."""
import re
import sys

log, n = sys.argv[1], int(sys.argv[2])
first = int(sys.argv[3]) if len(sys.argv) > 3 else 1
pat = re.compile(r"step \d+: (\d+) tokens, (\d+) us: scheduling (\d+), inputs (\d+), forward launch (\d+), "
                 r"sampling (\d+), outputs (\d+)")
rows = []
with open(log, errors="replace") as f:
    for no, line in enumerate(f, 1):
        m = pat.search(line) if no >= first else None
        if m and int(m.group(1)) == n:
            rows.append(list(map(int, m.groups())))
if not rows:
    sys.exit("no decode steps of %d sequences in the server's log" % n)


def mean(i, rs):
    return sum(r[i] for r in rs) / len(rs)


print(f"{len(rows)} steps of {n} decodes, mean us: step {mean(1, rows):.0f}, scheduling {mean(2, rows):.0f}, "
      f"inputs {mean(3, rows):.0f}, forward {mean(4, rows):.0f}, sampling {mean(5, rows):.0f}, "
      f"outputs {mean(6, rows):.1f}")
q = max(1, len(rows) // 4)
print("outputs by quarter of the run (us):", " / ".join(f"{mean(6, rows[i * q:(i + 1) * q]):.0f}" for i in range(4)))
