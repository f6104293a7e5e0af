"""`main --jobs N`: the planned stages side by side, each in its own process, as soon as its inputs are ready.

    albert-exp main --config experiments/toy.yaml --jobs 2     # scratch and baseline beside pretrain -> finetune

A stage starts when every stage it needs (of the plan) has finished; at most `jobs` run at once. Each is the
stage's own command (`python -m albert_exp <stage>` with the experiment's config and overrides) run by the same
executor as in one process, so identity, reuse, resume and results follow one rule whatever the parallelism;
its MLflow run is a child of `main`'s parent run, its console output goes to `<workdir>/logs/<stage>.log` (and
into its run's artifacts), and the terminal shows one line as each stage starts and ends. On GPUs each stage
gets one device (CUDA_VISIBLE_DEVICES). A failing stage stops its dependents, lets the running ones finish, and
`main` exits with one line naming it; Ctrl-C or SIGTERM stops every child (their runs end KILLED) and a rerun
resumes. Results do not depend on the parallelism: a stage's work depends on its config and inputs only
(threads are set by the config: `torch_threads`).

Why processes and not threads: the stages hold the GIL in tokenisation and CRF training, and each needs its own
torch thread setting, MLflow active run and signal handling; a process pool with a slot budget is all one
machine needs (the `ray` extra scales `pretraining-data` out instead).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from albert_exp.config import ExperimentConfig
from albert_exp.errors import UserError
from albert_exp.stage import Stage, StageResult
from albert_exp.tracking import PARENT_RUN_ENV as PARENT_RUN  # the child's stage run nests under `main`'s run

IN_MAIN = "ALBERT_EXP_IN_MAIN"  # the child records a reuse as a run (as `main` does in one process)
RESULT_FILE = "ALBERT_EXP_RESULT_FILE"  # where the child writes its StageResult for the parent


def default_jobs(cfg: ExperimentConfig) -> int:
    """One stage per GPU; on CPUs, the cores divided by a training stage's torch threads (0: torch takes every
    core, so one stage at a time)."""
    from albert_exp.devices import parallel_slots

    threads = (cfg.pretrain.torch_threads, cfg.finetune.torch_threads)
    return parallel_slots(0 if 0 in threads else max(threads))


class _Child:
    def __init__(self, stage: Stage, proc: subprocess.Popen, log: Path, result: Path, slot: int) -> None:
        self.stage, self.proc, self.log, self.result, self.slot = stage, proc, log, result, slot
        self.started = time.time()


def run_parallel(
    plan: list[Stage], cfg: ExperimentConfig, forced: set[str], jobs: int, parent_run_id: str | None
) -> dict[str, StageResult]:
    """Run `plan` with at most `jobs` stages at once; the results of every stage (or one line naming the first
    that failed, after the running ones have finished)."""
    run = _Plan(plan, cfg, forced, jobs, parent_run_id)
    try:
        while run.pending or run.running:
            run.launch_ready()
            time.sleep(0.2)
            run.reap()
    except BaseException:
        _stop(run.running.values())
        raise
    failed = {n: why for n, why in run.failed.items() if not why.startswith("not run")}
    if failed:
        first = next(iter(failed))
        raise UserError(
            f"stage `{first}` failed: {failed[first]}",
            where=str(run.logs / f"{first}.log"),
            fix="read its log; the stages that finished are kept and a rerun of `main` reuses them",
        )
    return {s.name: run.done[s.name] for s in plan if s.name in run.done}


class _Plan:
    """The stages waiting, running, done and failed, and the slots (`jobs`) they share."""

    def __init__(
        self, plan: list[Stage], cfg: ExperimentConfig, forced: set[str], jobs: int, parent_run_id: str | None
    ) -> None:
        self.cfg, self.forced, self.jobs, self.parent_run_id = cfg, forced, jobs, parent_run_id
        self.logs = cfg.root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.planned = {s.name for s in plan}
        self.pending = list(plan)
        self.running: dict[str, _Child] = {}
        self.done: dict[str, StageResult] = {}
        self.failed: dict[str, str] = {}

    def launch_ready(self) -> None:
        """Start every waiting stage whose planned inputs are done (in plan order) while a slot is free; drop
        those whose input failed."""
        for stage in list(self.pending):
            wanted = stage.needs(self.cfg) + stage.uses(self.cfg)
            blocked = [n for n in wanted if n in self.planned and n not in self.done]
            if any(n in self.failed for n in blocked):
                self.pending.remove(stage)
                self.failed[stage.name] = f"not run: it needs `{blocked[0]}`, which failed"
            elif not blocked and len(self.running) < self.jobs:
                self.pending.remove(stage)
                slot = min(set(range(self.jobs)) - {c.slot for c in self.running.values()})
                self.running[stage.name] = _start(stage, self, slot)

    def reap(self) -> None:
        for name, child in list(self.running.items()):
            if child.proc.poll() is not None:
                del self.running[name]
                _finish(child, self.done, self.failed)


def _start(stage: Stage, plan: _Plan, slot: int) -> _Child:
    """`albert-exp <stage>` in its own process, with the slot's device and share of the cores."""
    from albert_exp.devices import side_by_side_env

    cfg, parent_run_id = plan.cfg, plan.parent_run_id
    log, result = plan.logs / f"{stage.name}.log", plan.logs / f"{stage.name}.result.json"
    result.unlink(missing_ok=True)
    args = [sys.executable, "-m", "albert_exp", stage.name]
    if not cfg.source.startswith("<"):
        args += ["--config", cfg.source]
    for override in cfg.overrides:
        args += ["--set", override]
    if stage.name in plan.forced:
        args.append("--rerun")
    env = {**os.environ, IN_MAIN: "1", RESULT_FILE: str(result), "TQDM_DISABLE": os.environ.get("TQDM_DISABLE", "1")}
    if parent_run_id:
        env[PARENT_RUN] = parent_run_id
    env["MLFLOW_TRACKING_URI"] = _tracking_uri()  # the store this `main` logs to, however it was set
    env.pop("MLFLOW_RUN_ID", None)
    env.update(side_by_side_env(slot, plan.jobs))
    print(f"{stage.name}: started (log: {log})", flush=True)
    with open(log, "w") as fh:  # the child holds its own descriptor
        proc = subprocess.Popen(args, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    return _Child(stage, proc, log, result, slot)


def _tracking_uri() -> str:
    from albert_exp.tracking import tracking_uri

    return tracking_uri()


def _finish(child: _Child, done: dict[str, StageResult], failed: dict[str, str]) -> None:
    seconds = time.time() - child.started
    name = child.stage.name
    if child.proc.returncode == 0 and child.result.is_file():
        data = json.loads(child.result.read_text())
        result = StageResult(**data)
        done[name] = result
        if result.reused:  # the line the stage prints in one process
            same = "same settings, inputs and code"
            print(f"{name}: reusing run {result.run_id} ({same}; `--rerun {name}` computes it again)", flush=True)
        else:
            print(f"{name}: done in {seconds:.0f} s (run {result.run_id})", flush=True)
        _log_to_run(result.recorded_by or result.run_id, child.log)
        return
    lines = [x for x in child.log.read_text(errors="replace").splitlines() if x.strip()]
    errors = [x for x in lines if x.startswith("error:")]
    why = (errors or lines or [f"exit status {child.proc.returncode}"])[-1].removeprefix("error: ")
    failed[name] = why
    print(f"{name}: FAILED after {seconds:.0f} s: {why}", flush=True)


def _log_to_run(run_id: str | None, log: Path) -> None:
    if not run_id:
        return
    from albert_exp.tracking import store_client

    store_client().log_artifact(run_id, str(log), "logs")


def _stop(children: Any) -> None:
    """SIGTERM to every running stage (each ends its run KILLED and keeps its partial output), then wait."""
    children = list(children)
    for c in children:
        if c.proc.poll() is None:
            os.killpg(c.proc.pid, signal.SIGTERM)
    deadline = time.time() + 60
    for c in children:
        try:
            c.proc.wait(timeout=max(1.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            os.killpg(c.proc.pid, signal.SIGKILL)
            c.proc.wait()


def write_result(result: StageResult) -> None:
    """In a child of `main --jobs`: the result for the parent (the results.json of a stage without an output
    directory is not where the parent can find it by the stage's link alone)."""
    path = os.environ.get(RESULT_FILE)
    if path:
        data = {f: getattr(result, f) for f in result.__dataclass_fields__}
        data["values"] = dict(result.values)
        Path(path).write_text(json.dumps(data, default=str))
