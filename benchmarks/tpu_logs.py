"""tpu-logs ingest vs the `log_batch` baseline (issue #14), on a synthetic 1,000,000-line TPU log.

    .venv/bin/python benchmarks/tpu_logs.py                  # 1M lines: a 1M-step run logged every 100 steps
    .venv/bin/python benchmarks/tpu_logs.py --lines 200000 --repeat 3

The log: 1,000,000 steps printed every 100 (10,000 loss lines, each with its glog copy and rate lines), two
restarts, eval blocks, and TPU infeed/outfeed chatter padding it to --lines lines (tests/tpu_logs_synth.py).

The baseline is `benchmarks/tpu_logs_log_batch.py`: ~40 lines that match the glog lines with one regex, keep
the first value per (metric, step) and call `MlflowClient.log_batch` in chunks of 1,000. Both run as fresh
processes (`python -m albert_exp tpu-logs ingest LOG` and `python benchmarks/tpu_logs_log_batch.py LOG`) into
the same SQLite store (created and migrated before any clock starts), back to back, alternating, --repeat
times each; the benchmark checks that both logged the same points. Reported per side: the median wall time
and the median CPU seconds (user + sys of the process and its children, which counts our parsing process),
and the ratios baseline / ours (> 1: ours is faster). Ours does more: de-duplication across restarts and
formats, params, tags, tables (CSV + Parquet), the loss-curve plot and results.json; its forked second
process parses while MLflow loads and writes the tables and the plot while the points are logged (one bulk
insert into this SQL store: albert_exp/tracking/bulk.py), so on a machine with a free core the wall time follows
the main process's CPU (printed too), not the total. --without-bulk adds a third side: ours with the bulk insert
switched off (ALBERT_EXP_BULK_LOG=0: every point through log_batch, as when MLflow is outside the tested range or
the fast path fails).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from albert_exp.tpu_logs.parse import parse_files  # noqa: E402
from tests.tpu_logs_synth import SynthSpec, write_logs  # noqa: E402 (test data, also used here)


def timed(cmd: list[str], env: dict, cwd: Path) -> tuple[float, float, str]:
    """(wall s, CPU s of the child and its children, stdout)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    out = subprocess.run(cmd, env=env, cwd=cwd, check=True, capture_output=True, text=True).stdout
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), out


def points_of(db: Path, experiment: str) -> dict:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    exp = client.get_experiment_by_name(experiment)
    (run,) = client.search_runs([exp.experiment_id], max_results=1)
    out = {}
    for key in run.data.metrics:
        if key.startswith("tpu/"):  # ours also logs its summary figures (7 points)
            continue
        for m in client.get_metric_history(run.info.run_id, key):
            out[(key, m.step)] = (m.value, m.timestamp)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--steps", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3, help="runs of each side (medians are reported)")
    ap.add_argument("--without-bulk", action="store_true", help="also ours with ALBERT_EXP_BULK_LOG=0")
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
        print(f"parse only (in process): {parse_s:6.2f} s   {lines / parse_s:,.0f} lines/s")

        db = tmp / "mlflow.db"
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{db}", "HF_HUB_OFFLINE": "1"}
        subprocess.run(
            [sys.executable, "-c", "from mlflow import MlflowClient; MlflowClient().search_experiments()"],
            env=env,
            check=True,
            stderr=subprocess.DEVNULL,
        )
        year = str(logs.truth.start_time.year)
        ours, base, slow = [], [], []
        for n in range(args.repeat):
            if args.without_bulk:
                slow.append(
                    timed(
                        [sys.executable, "-m", "albert_exp", "tpu-logs", "ingest", str(log), "--experiment", f"slow{n}"]
                        + ["--no-progress", "--out", str(tmp / f"slow{n}")],
                        {**env, "ALBERT_EXP_BULK_LOG": "0"},
                        tmp,
                    )
                )
            ours.append(
                timed(
                    [sys.executable, "-m", "albert_exp", "tpu-logs", "ingest", str(log), "--experiment", f"ours{n}"]
                    + ["--no-progress", "--out", str(tmp / f"out{n}")],
                    env,
                    tmp,
                )
            )
            base.append(
                timed(
                    [sys.executable, str(ROOT / "benchmarks" / "tpu_logs_log_batch.py"), str(log)]
                    + ["--year", year, "--experiment", f"base{n}"],
                    env,
                    tmp,
                )
            )
        mine, theirs = points_of(db, "ours0"), points_of(db, "base0")
        assert mine == theirs, f"the two logged different points ({len(mine)} vs {len(theirs)})"
        assert not slow or points_of(db, "slow0") == mine, "with and without the bulk insert: different points"
        timings = [json.loads((tmp / f"out{n}" / "results.json").read_text())["timings"] for n in range(args.repeat)]
        main_cpu = statistics.median(t["cpu_s"] for t in timings)
        wall_o, cpu_o = statistics.median(w for w, _, _ in ours), statistics.median(c for _, c, _ in ours)
        wall_b, cpu_b = statistics.median(w for w, _, _ in base), statistics.median(c for _, c, _ in base)
        print(f"same {len(mine):,} points (values and timestamps) in both runs; medians of {args.repeat} runs each:")
        print(f"  ours (tpu-logs ingest):  wall {wall_o:6.2f} s   CPU {cpu_o:6.2f} s   (main process {main_cpu:.2f} s)")
        print(f"  baseline (log_batch):    wall {wall_b:6.2f} s   CPU {cpu_b:6.2f} s   (one process)")
        if slow:
            wall_s, cpu_s = statistics.median(w for w, _, _ in slow), statistics.median(c for _, c, _ in slow)
            print(f"  ours, ALBERT_EXP_BULK_LOG=0: wall {wall_s:6.2f} s   CPU {cpu_s:6.2f} s")
        print(f"  ours, first run: {timings[0]}")
        sides = (("ours", ours), ("baseline", base), ("ours without bulk", slow))
        walls = {name: [round(w, 2) for w, _, _ in runs] for name, runs in sides if runs}
        print(f"  every run's wall s: {walls}")
        print(
            f"ratio baseline / ours: wall {wall_b / wall_o:.2f}x, CPU {cpu_b / cpu_o:.2f}x, CPU of the process the "
            f"user waits for {cpu_b / main_cpu:.2f}x (> 1: ours is faster)"
        )
        if slow:
            print(
                f"ratio baseline / ours without the bulk insert: wall {wall_b / wall_s:.2f}x, CPU {cpu_b / cpu_s:.2f}x"
            )


if __name__ == "__main__":
    main()
