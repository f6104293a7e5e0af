"""tpu-logs ingest vs a naive line-by-line `mlflow.log_metric` loop, on a 1,000,000-line synthetic TPU log.

    .venv/bin/python benchmarks/tpu_logs.py                    # 1M lines: a 1M-step run logged every 100 steps
    .venv/bin/python benchmarks/tpu_logs.py --lines 200000 --naive-lines 20000

The log: 1,000,000 steps printed every 100 (10,000 loss lines, each with its glog copy and rate lines), two
restarts, eval blocks, and TPU infeed/outfeed chatter padding it to --lines lines (albert_exp/tpu_logs/synth.py).

Measured:
1. parsing alone (lines/s), in process;
2. end to end: `python -m albert_exp tpu-logs ingest LOG` in a fresh process into a fresh local SQLite MLflow
   store created beforehand (process start, imports, parse, back-fill, tables, plot, results.json), wall-clock;
3. naive: read the file line by line, regex each line, `mlflow.log_metric(key, value, step=step)` per metric
   line inside one run. It is run on the first --naive-lines lines only and extrapolated linearly to the whole
   file (metric lines are spread evenly through the log); the printout says so. It is also counted in its
   favour: its store is created before the clock starts, and it neither de-duplicates nor writes artifacts.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from albert_exp.tpu_logs.parse import parse_files  # noqa: E402
from albert_exp.tpu_logs.synth import SynthSpec, write_logs  # noqa: E402

LOSS = re.compile(r"loss = ([^,\s]+), step = (\d+)")
RATE = re.compile(r"(global_step/sec|examples/sec): (\S+)")


def naive(log: Path, max_lines: int, uri: str) -> tuple[float, int, int]:
    """Returns (seconds, lines read, log_metric calls)."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("naive")
    calls, step, n = 0, 0, 0
    with mlflow.start_run():
        t0 = time.perf_counter()
        with open(log, encoding="utf-8", errors="replace") as f:
            for n, line in enumerate(f, 1):
                if n > max_lines:
                    n -= 1
                    break
                m = LOSS.search(line)
                if m:
                    step = int(m.group(2))
                    mlflow.log_metric("train/loss", float(m.group(1)), step=step)
                    calls += 1
                    continue
                m = RATE.search(line)
                if m:
                    mlflow.log_metric("train/" + m.group(1).replace("/sec", "_per_s"), float(m.group(2)), step=step)
                    calls += 1
        seconds = time.perf_counter() - t0
    return seconds, n, calls


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--steps", type=int, default=1_000_000)
    ap.add_argument("--naive-lines", type=int, default=20_000, help="lines the naive loop really runs on")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="tpu_logs_bench_") as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        spec = SynthSpec(
            num_train_steps=args.steps,
            target_lines=args.lines,
            eval_every=50_000,
            crashes=(args.steps * 3 // 10 + 50, args.steps * 7 // 10 + 20),
            layout="single",
            order="random",
            seed=0,
        )
        logs = write_logs(spec, tmp / "logs")
        log = logs.files[0]
        lines = logs.truth.lines
        print(
            f"log: {lines:,} lines, {log.stat().st_size / 1e6:.0f} MB, {len(logs.truth.metrics):,} metric points "
            f"(generated in {time.perf_counter() - t:.1f} s)"
        )

        t = time.perf_counter()
        result = parse_files([log], progress=False)
        parse_s = time.perf_counter() - t
        assert len(result.table) == len(logs.truth.metrics)
        print(f"parse only:          {parse_s:6.2f} s   {lines / parse_s:,.0f} lines/s")

        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'ours.db'}", "HF_HUB_OFFLINE": "1"}
        # The store exists before the clock starts (as a user's mlflow.db does; the naive loop gets the same).
        t = time.perf_counter()
        subprocess.run(
            [sys.executable, "-c", "from mlflow import MlflowClient; MlflowClient().search_experiments()"],
            env=env,
            check=True,
            stderr=subprocess.DEVNULL,
        )
        print(f"(creating the SQLite store: {time.perf_counter() - t:.1f} s, not counted)")
        t = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "albert_exp",
                "tpu-logs",
                "ingest",
                str(log),
                "--experiment",
                "bench",
                "--no-progress",
                "--out",
                str(tmp / "out"),
            ],
            cwd=tmp,
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        ours_s = time.perf_counter() - t
        timings = json.loads((tmp / "out" / "results.json").read_text())["timings"]
        print(
            f"ingest end to end:   {ours_s:6.2f} s   ({len(result.table):,} points back-filled; target < 30 s: "
            f"{'met' if ours_s < 30 else 'NOT met'})"
        )
        parse = (
            f"parse {timings['parse_s']} s"
            if "parse_s" in timings
            else f"waiting for the parse (a second process, started before MLflow loads) {timings['parse_wait_s']} s"
        )
        print(
            f"   of which {parse}, log_batch {timings['log_metrics_s']} s, tables + plot "
            f"{timings['artifacts_s']} s; the rest is process start, imports (mlflow, pandas) and run set-up"
        )

        naive_s, naive_lines, calls = naive(log, args.naive_lines, f"sqlite:///{tmp / 'naive.db'}")
        factor = lines / naive_lines
        naive_total = naive_s * factor
        print(
            f"naive log_metric:    {naive_s:6.2f} s for the first {naive_lines:,} lines ({calls:,} calls); "
            f"extrapolated x{factor:.0f} to the whole log: {naive_total:,.0f} s"
        )
        print(f"ratio naive / ingest: {naive_total / ours_s:,.1f}x")


if __name__ == "__main__":
    main()
