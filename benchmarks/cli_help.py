"""`albert-exp --help` start-up time against a bare Python start (the floor any CLI pays).

    python benchmarks/cli_help.py [--repeat 10]

Prints the median wall time of `python -m albert_exp --help` and `python -c pass`, and their ratio. The CLI
imports only the command table (stage modules load when their command runs), so the ratio should stay
small (it was a unit-test assert `< 1 s` before; timings do not belong in unit tests on a shared machine).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def median_wall(cmd: list[str], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=10)
    args = ap.parse_args()
    ours = median_wall([sys.executable, "-m", "albert_exp", "--help"], args.repeat)
    floor = median_wall([sys.executable, "-c", "pass"], args.repeat)
    print(f"albert-exp --help: {ours * 1000:.0f} ms   python -c pass: {floor * 1000:.0f} ms", end="   ")
    print(f"ratio {ours / floor:.1f}x")


if __name__ == "__main__":
    main()
