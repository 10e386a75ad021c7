"""The full crash test: ``--trials`` trials (default 20) of SIGKILL at random moments, a quarter
of them inside a checkpoint write, each resumed until it finishes; every sink must end equal to
one uninterrupted run. Prints one line per trial and a summary (also to build/crash_recovery.md).

    .venv/bin/python benchmarks/crash_recovery.py [--trials 20] [--payments 40000] [--seed 1]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from tideflow.bench.recovery import run_trials


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--payments", type=int, default=40_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = run_trials(Path(tmp), trials=args.trials, payments=args.payments, seed=args.seed)
    lines = [
        "| trial | kills | inside a checkpoint write | killed at (s, newest checkpoint) | equal |",
        "|---:|---:|---|---|---|",
    ]
    for r in results:
        shown = ", ".join(f"{t:.2f}s/{e}" if t >= 0 else f"save/{e}" for t, e in r.killed_at)
        lines.append(
            f"| {r.trial} | {r.kills} | {'yes' if r.self_kill else ''} | {shown} "
            f"| {'yes' if r.equal else r.differences} |"
        )
    kills = sum(r.kills for r in results)
    mid = sum(1 for r in results for _, e in r.killed_at if e is not None)
    passed = sum(r.equal for r in results)
    lines.append("")
    lines.append(
        f"{passed}/{len(results)} trials equal to the uninterrupted run; "
        f"{kills} kills, {mid} after a checkpoint existed."
    )
    text = "\n".join(lines)
    print(text)
    Path("build").mkdir(exist_ok=True)
    Path("build/crash_recovery.md").write_text(text + "\n")
    return 0 if passed == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
