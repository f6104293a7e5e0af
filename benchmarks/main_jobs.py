"""`main` with one stage at a time against `main --jobs N`, on the same experiment and machine, in one run.

    python benchmarks/main_jobs.py                                   # experiments/toy.yaml, --jobs 1 vs 2
    python benchmarks/main_jobs.py --config experiments/toy.yaml --jobs 2 --set "tune.n_trials=2"

Each side is a fresh workdir and a fresh MLflow store (nothing reused), run as a user runs it
(`python -m albert_exp main`), one after the other. Prints per side: wall seconds, CPU seconds of the whole
process tree (user + system), the stage timeline (start offset and duration of every stage run, from the
runs' own start and end times), and the ratio of the walls. The metrics of every stage must agree between the
sides (the benchmark checks it: results must not depend on the parallelism).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(config: str, jobs: int, sets: list[str], where: Path) -> dict:
    where.mkdir(parents=True)
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{where / 'mlflow.db'}", "HF_HUB_OFFLINE": "1"}
    env.pop("MLFLOW_RUN_ID", None)
    cmd = [sys.executable, "-m", "albert_exp", "main", "--config", str(ROOT / config), "--jobs", str(jobs)]
    cmd += ["--workdir", str(where / "runs"), *[x for s in sets for x in ("--set", s)]]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.time()
    out = subprocess.run(cmd, cwd=where, env=env, capture_output=True, text=True)
    wall = time.time() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode:
        raise SystemExit(f"--jobs {jobs} failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    results = json.loads((where / "runs" / "results.json").read_text())
    return {"wall": wall, "cpu": cpu, "results": results, "timeline": timeline(where, results["parent_run_id"])}


def timeline(where: Path, parent_id: str) -> list[tuple[str, float, float]]:
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{where / 'mlflow.db'}")
    parent = client.get_run(parent_id)
    kids = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")
    t0 = parent.info.start_time
    rows = [
        (r.data.tags.get("stage", "?"), (r.info.start_time - t0) / 1e3, (r.info.end_time - r.info.start_time) / 1e3)
        for r in kids
    ]
    return sorted(rows, key=lambda r: r[1])


def figures(results: dict) -> dict:
    keep = ("pretrain", "finetune", "scratch", "baseline")
    return {s: {k: v for k, v in results[s].items() if k.startswith(("test/", "val/"))} for s in keep if s in results}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="experiments/toy.yaml")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--set", dest="sets", action="append", default=[])
    args = ap.parse_args()
    print(f"machine: {os.cpu_count()} CPUs, load before: {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory(prefix="main_jobs.") as tmp:
        # the parallel side first: load left from before the benchmark slows it, not the baseline (conservative)
        sides = {jobs: run(args.config, jobs, args.sets, Path(tmp) / f"jobs{jobs}") for jobs in (args.jobs, 1)}
    for jobs, side in sorted(sides.items()):
        print(f"\n--jobs {jobs}: {side['wall']:.0f} s wall, {side['cpu']:.0f} CPU-s (process tree)")
        for stage, start, took in side["timeline"]:
            print(f"  {stage:18s} starts at {start:6.0f} s, takes {took:6.0f} s")
    one, many = sides[1], sides[args.jobs]
    same = figures(one["results"]) == figures(many["results"])
    print(f"\nwall --jobs 1 / --jobs {args.jobs}: {one['wall'] / many['wall']:.2f}x; metrics equal: {same}")
    print(f"load after: {os.getloadavg()[0]:.2f}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
