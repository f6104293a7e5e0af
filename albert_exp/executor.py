"""The one executor: runs any declared stage (albert_exp/stage.py) the same way, from `main` or alone.

    from albert_exp.executor import run_stage
    result = run_stage("vocab", cfg)                 # reused, resumed or computed; a StageResult either way
    result = run_stage("finetune", cfg, rerun=True)  # computed again from the start

For a stage with an output directory, in this order:
1. Upstream: the results of the stages it needs (`Stage.needs`): those this `main` ran, else the complete
   output each one's path names now, else (for stages made on demand, `auto`) computed now; a missing one stops
   with one line naming it and the command that makes it. `Stage.configure` wires them into the config.
2. Identity (albert_exp/identity.py) and the output path, which must be free or the project's own link.
3. Reuse: a complete output of the same identity that is all the config asks for (`Stage.reached`) and whose
   results.json names a FINISHED run of this store (the run that computed it: a search trial with the same
   settings is not that run) is used as it is: the link names it again; in `main` a child run records the
   reuse (tag `reused_run_id`). `rerun` skips this.
4. Compute: into `<link>@<key>.partial` (kept from a killed run of a resumable stage, else fresh), in the
   stage's MLflow run (the run a killed run of the same identity recorded there, else a new one); the compute
   function's dict becomes results.json with the run id, key and output path; the directory is renamed into
   place and the link moved (albert_exp/outputs.py).
Under `torchrun`, rank 0 alone decides, writes, prints and logs; the other ranks wait for it (and, for a
distributed stage, compute beside it with an in-memory tracker). Stages without an output directory (`tune`,
`promote`: the run is the result) are reused when the latest FINISHED run of their identity still holds
(`Stage.reusable`). A workdir lock (albert_exp/locks.py) is taken by the commands, not here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from albert_exp import ranks
from albert_exp.config import ExperimentConfig
from albert_exp.errors import UserError
from albert_exp.identity import input_digests, output_of
from albert_exp.outputs import StageOutput
from albert_exp.stage import Context, Stage, StageResult
from albert_exp.stages import STAGES
from albert_exp.tracking import KEY, REUSED, finished_run, stage_run, store_client, write_results


def run_stage(
    stage: Stage | str,
    cfg: ExperimentConfig,
    *,
    upstream: Mapping[str, StageResult] | None = None,
    rerun: bool = False,
    hooks: Mapping[str, Any] | None = None,
    in_main: bool = False,
) -> StageResult:
    """Reuse, resume or compute `stage` under `cfg` (see the module docstring)."""
    stage = STAGES[stage] if isinstance(stage, str) else stage
    up = _upstream(stage, cfg, upstream or {})
    cfg = stage.configure(cfg, up)
    if not stage.has_output:
        return _run_only(stage, cfg, up, rerun, hooks or {}, in_main)
    if ranks.world() > 1 and not stage.distributed:  # rank 0 computes, the others take its result
        outcome = None
        if ranks.is_main():
            with ranks.alone():
                outcome = _guarded(lambda: _run(stage, cfg, up, rerun, hooks or {}, in_main), shared=True)
        return _unwrap(ranks.share(outcome))
    return _run(stage, cfg, up, rerun, hooks or {}, in_main)


def _run(
    stage: Stage, cfg: ExperimentConfig, up: Mapping[str, StageResult], rerun: bool, hooks: Mapping, in_main: bool
) -> StageResult:
    output = output_of(stage, cfg)
    decision = None
    if ranks.is_main():
        decision = _guarded(lambda: _decide(stage, cfg, output, rerun))
    outcome = _unwrap(ranks.share(decision))  # under torchrun every rank follows rank 0's decision
    if outcome is not None:
        return _record_reuse(stage, cfg, output, outcome, in_main)
    return _compute(stage, cfg, output, up, rerun, hooks)


def _decide(stage: Stage, cfg: ExperimentConfig, output: StageOutput, rerun: bool) -> dict | None:
    """The results of a reusable complete output, or None (compute). Prepares the work directory to compute."""
    output.check(f"the output of `{stage.name}`")
    done = None if rerun else output.complete()
    if done is not None and stage.reached(cfg, done) and (not stage.tracked or finished_run(done.get("run_id"))):
        return done
    output.start(fresh=rerun or not stage.resumable)
    return None


def _record_reuse(stage: Stage, cfg: ExperimentConfig, output: StageOutput, done: dict, in_main: bool) -> StageResult:
    result = StageResult.from_dict(stage.name, done, reused=True)
    if not ranks.is_main():
        return result
    output.point()  # the stage's path names the reused output again
    recorded = _reuse_run(stage, cfg, result) if in_main else None
    if stage.tracked:
        print(
            f"{stage.name}: reusing run {result.run_id}: {output.done.name} is complete with the same settings, "
            f"inputs and code (`--rerun {stage.name}` computes it again)"
        )
    return StageResult(result.stage, result.run_id, result.key, result.output_dir, result.values, True, recorded)


def _reuse_run(stage: Stage, cfg: ExperimentConfig, result: StageResult) -> str | None:
    """In `main`: a child run that says this stage was reused, and from which run (lineage follows it)."""
    if not stage.tracked:
        return None
    earlier = finished_run(result.run_id)
    upstream = {k: v for k, v in (earlier.tags if earlier else {}).items() if k.startswith("upstream.")}
    with stage_run(cfg, stage.name, f"reuses {str(result.run_id)[:8]}", section=stage.section) as tracker:
        tracker.set_tags({REUSED: result.run_id, "reused_key": result.key, **upstream})
    return tracker.run_id


def _compute(
    stage: Stage, cfg: ExperimentConfig, output: StageOutput, up: Mapping[str, StageResult], rerun: bool, hooks: Mapping
) -> StageResult:
    ctx = Context(cfg, output, None, up, hooks, fresh=rerun, run=_nested, stage=stage.name)
    ctx.prepared = stage.prepare(ctx)
    paths = stage.inputs(cfg)
    digests = input_digests(paths)
    with stage_run(
        cfg,
        stage.name,
        stage.describe(cfg),
        section=stage.section,
        extra_params=stage.params(ctx),
        output=output,
        inputs={name: (p, digests[name]) for name, p in paths.items()},
        enabled=ranks.is_main() and stage.tracked,
    ) as tracker:
        ctx.tracker = tracker
        values = stage.compute(ctx)
        result = StageResult(stage.name, tracker.run_id, output.key, str(output.done), values)
        if ranks.is_main():
            write_results(output.work, result.as_dict(), tracker)
    if ranks.is_main():
        output.commit()
    return result


def _nested(stage: str, cfg: ExperimentConfig, hooks: Mapping[str, Any] | None = None) -> StageResult:
    """What a stage's compute calls to run another stage inside its own (a search's trials)."""
    return run_stage(stage, cfg, hooks=hooks)


def _run_only(
    stage: Stage, cfg: ExperimentConfig, up: Mapping[str, StageResult], rerun: bool, hooks: Mapping, in_main: bool
) -> StageResult:
    """A stage whose run is its result (no output directory): reused while its latest FINISHED run of the same
    identity still holds, else run; results.json goes to <workdir>/<stage>/ and into the run."""
    key = stage.key(cfg, up) if stage.key else ""
    if not rerun:
        earlier = latest_finished_run(cfg.name, stage.name, key)
        done = _artifact_results(earlier) if earlier else None
        if done is not None and stage.reusable(cfg, up, done):
            result = StageResult.from_dict(stage.name, done, reused=True)
            recorded = _reuse_run(stage, cfg, result) if in_main else None
            print(
                f"{stage.name}: reusing run {result.run_id} (same settings, inputs and code; `--rerun` runs it again)"
            )
            return StageResult(stage.name, result.run_id, key, None, result.values, True, recorded)
    where = cfg.stage_dir(stage.name)
    ctx = Context(cfg, StageOutput(where, key), None, up, hooks, fresh=rerun, run=_nested, stage=stage.name)
    ctx.prepared = stage.prepare(ctx)
    with stage_run(cfg, stage.name, stage.describe(cfg), section=stage.section, extra_params=stage.params(ctx)) as t:
        t.set_tags({KEY: key})
        ctx.tracker = t
        values = stage.compute(ctx)
        result = StageResult(stage.name, t.run_id, key, None, values)
        write_results(where, result.as_dict(), t)
    return result


def latest_finished_run(experiment: str, stage: str, key: str) -> str | None:
    """The latest FINISHED run of `stage` with identity `key` that computed something (not a recorded reuse)."""
    import os

    client = store_client()
    exp_id = os.environ.get("MLFLOW_EXPERIMENT_ID")  # where this command's runs go (tracking/runs.py)
    if not exp_id:
        exp = client.get_experiment_by_name(os.environ.get("MLFLOW_EXPERIMENT_NAME") or experiment)
        if exp is None:
            return None
        exp_id = exp.experiment_id
    query = f"tags.stage = '{stage}' and tags.`{KEY}` = '{key}' and attributes.status = 'FINISHED'"
    for r in client.search_runs([exp_id], query, order_by=["attributes.start_time DESC"]):
        if REUSED not in r.data.tags:
            return r.info.run_id
    return None


def _artifact_results(run_id: str) -> dict | None:
    from albert_exp.tracking import download_artifacts

    try:
        return json.loads(Path(download_artifacts(f"runs:/{run_id}/results.json")).read_text())
    except Exception:  # no results artifact (a run from before this rule): run again
        return None


def _upstream(stage: Stage, cfg: ExperimentConfig, given: Mapping[str, StageResult]) -> dict[str, StageResult]:
    """The results of the stages `stage` needs: from this `main`, from what their paths name now, or (stages
    made on demand) computed now."""
    found: dict[str, StageResult] = {}
    for name in stage.needs(cfg):
        need = STAGES[name]
        if name in given:
            found[name] = given[name]
        elif need.auto:
            found[name] = run_stage(need, cfg, upstream=given)
        else:
            found[name] = current(need, cfg) or _missing(stage, need, cfg)
    for name in stage.uses(cfg):  # optional: what this main made, else what the workdir holds, else nothing
        result = given.get(name) or current(STAGES[name], cfg)
        if result is not None:
            found[name] = result
    return found


def check_plan(stages: list[Stage], cfg: ExperimentConfig) -> None:
    """Before anything runs: every input of the planned stages comes from a planned stage, from an output on
    disk, or from a stage made on demand; else one line names the first missing one."""
    planned = {s.name for s in stages}
    for stage in stages:
        for name in stage.needs(cfg):
            need = STAGES[name]
            if name not in planned and not need.auto and current(need, cfg) is None:
                _missing(stage, need, cfg)


def current(stage: Stage, cfg: ExperimentConfig) -> StageResult | None:
    """The complete output `stage`'s path names now (its results.json), or None."""
    path = stage.output_link(cfg) / "results.json"
    if not path.is_file():
        return None
    return StageResult.from_dict(stage.name, json.loads(path.read_text()))


def _missing(stage: Stage, need: Stage, cfg: ExperimentConfig) -> StageResult:
    config = f" --config {cfg.source}" if not cfg.source.startswith("<") else ""
    raise UserError(
        f"`{stage.name}` needs the output of `{need.name}`, and there is none",
        where=str(need.output_link(cfg)),
        fix=f"add {need.name} to `stages:`, or run `{need.command}{config}` first",
    )


def _guarded(fn: Any, shared: bool = False) -> tuple[str, Any]:
    """("ok", value) or ("error", the exception): what rank 0 shares, so that no rank waits for a rank that failed."""
    try:
        return ("ok", fn())
    except Exception as exc:
        if ranks.world() == 1 and not shared:
            raise
        return ("error", exc)


def _unwrap(outcome: tuple[str, Any] | None) -> Any:
    if outcome is None:
        return None
    status, value = outcome
    if status == "error":
        raise value
    return value
