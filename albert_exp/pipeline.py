"""`main`: the stages of an experiment, in dependency order, under one MLflow parent run.

    albert-exp main --config experiments/toy.yaml                    # what `make demo` and `mlflow run .` run
    albert-exp main --config experiments/toy.yaml --rerun finetune   # recompute fine-tuning (and what follows)
    albert-exp main --config experiments/toy.yaml --set "stages=[corpus,vocab,pretraining-data]"  # data only

Every stage in `stages:` (any subset) goes through the one executor (albert_exp/executor.py), as it does when
run alone: reused when a complete output of the same identity (its settings, its inputs' contents, the code)
exists — `main` prints `<stage>: reusing run <id>` and a child run records it (tag `reused_run_id`) — resumed
when a killed run left a partial one, computed otherwise. A stage reads the outputs of the stages it needs
from this `main` when they are in the subset, else from what their paths name now; a missing one stops with
one line naming it and the command that makes it. `--rerun STAGE[,STAGE]|all` computes the named stages again
whatever they match; the stages after them see new inputs only if the recomputed output differs.

Why this way: mlflow's examples/multistep_workflow `_already_ran` looks for an earlier run with the same entry
point, parameters and git commit and reuses it. Our identity also covers the input *contents* (the example's
check would reuse a run whose input files changed under the same parameters), and a reused output must be
complete on disk and name a FINISHED run of this store (the example trusts the run alone; our next stage reads
the files). Promotion is reused only while the champion is the one that earlier decision left.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from albert_exp.config import KNOWN_STAGES, ExperimentConfig
from albert_exp.errors import UserError
from albert_exp.executor import check_plan, run_stage
from albert_exp.locks import workdir_lock
from albert_exp.scheduler import default_jobs, run_parallel
from albert_exp.stage import StageResult
from albert_exp.stages import in_order


def parse_rerun(text: str) -> set[str]:
    names = {s.strip() for s in (text or "").split(",") if s.strip()}
    if "all" in names:
        return set(KNOWN_STAGES)
    unknown = names - set(KNOWN_STAGES)
    if unknown:
        raise UserError(
            f"unknown stage(s) {sorted(unknown)} in --rerun",
            where="--rerun",
            fix=f"name stages among {', '.join(KNOWN_STAGES)}, or `all`",
        )
    return names


def run(cfg: ExperimentConfig, rerun: str = "") -> dict[str, Any]:
    forced = parse_rerun(rerun)
    with workdir_lock(cfg.root, "main"):
        check_plan([s for s in in_order(cfg.stages) if s.applies(cfg)], cfg)  # a missing input: before any run
        return _run(cfg, forced)


def _run(cfg: ExperimentConfig, forced: set[str]) -> dict[str, Any]:
    from albert_exp.summary import plain, publish
    from albert_exp.tracking import stage_run, tracking_uri, write_results

    t0 = time.time()
    with stage_run(cfg, "main", cfg.name, section="none", extra_params={"stages": ",".join(cfg.stages)}) as parent:
        parent.set_tags({"rerun": ",".join(sorted(forced))})
        plan = [s for s in in_order(cfg.stages) if s.applies(cfg)]
        jobs = cfg.jobs or default_jobs(cfg)
        parent.set_tags({"jobs": jobs})
        done: dict[str, StageResult] = {}
        if jobs > 1 and len(plan) > 1:  # each stage in its own process, as soon as its inputs are ready
            done = run_parallel(plan, cfg, forced, jobs, parent.run_id)
        else:
            for stage in plan:
                done[stage.name] = run_stage(stage, cfg, upstream=done, rerun=stage.name in forced, in_main=True)
        results: dict[str, Any] = {"parent_run_id": parent.run_id}
        results.update({name.replace("-", "_"): r.as_dict() for name, r in done.items()})
        summary = _log_summary(parent, results)
        results["reused"] = [name.replace("-", "_") for name, r in done.items() if r.reused]
        results["seconds"] = round(time.time() - t0, 1)
        parent.set_tags({"reused_stages": ",".join(results["reused"])})
        note = publish(parent, cfg.name, results) if {"finetune", "curve"} & set(done) else ""
        write_results(cfg.root, results, parent)
    if note:
        print("\n" + plain(note))
    _report(
        cfg,
        results,
        results.get("tune"),
        results.get("promote"),
        summary,
        results.get("finetune") or {},
        tracking_uri(),
        parent.experiment_id,
    )
    return {"print_json": False, **results}


def _log_summary(parent: Any, results: dict[str, Any]) -> dict[str, float]:
    """The figures a user asks first, as metrics and tags of the parent run; returns the test figures shown."""
    from albert_exp.baseline import summary_rows

    ft, pt, bl, tuned, pr = (results.get(k) for k in ("finetune", "pretrain", "baseline", "tune", "promote"))
    summary: dict[str, float] = {}
    if pt:
        parent.set_tags({"pretrained_model_dir": pt["model_dir"]})
    if ft:
        summary = {k: v for k, v in ft.items() if k.startswith("test/")}
        parent.log_metrics(summary, step=0)
        parent.set_tags({"model_uri": ft.get("model_uri", ""), "dataset_digest": ft["dataset_digest"]})
    if bl:  # the classic CRF on the same split: a row of the summary table
        parent.log_metrics(summary_rows(bl), step=0)
    if tuned:
        parent.set_tags({"best_trial_model_uri": tuned.get("model_uri", "")})
    if pr:
        summary = {f"test/{k}": v for k, v in pr["champion_metrics"].items()}
        parent.log_metrics({f"champion/{k}": v for k, v in summary.items()}, step=0)
        parent.set_tags({"champion_uri": pr["champion_uri"], "champion_version": pr["champion_version"]})
    return summary


def _report(cfg, results, tuned, pr, summary, ft, uri, experiment_id) -> None:
    from albert_exp.summary import runs_url
    from albert_exp.tracking import store_client

    if tuned:
        print(
            f"\nsearch: best trial {tuned['best_trial']} lr={tuned['best_params']['learning_rate']:.3g} "
            f"epochs={tuned['best_params']['epochs']} val={tuned['best_value']:.4f}, {tuned['n_pruned']} pruned"
        )
    unseen = summary.get("test/unseen_mentions", 0) > 0  # the split has mentions of dishes training never saw
    what = "test metrics (dish names never seen in training)" if unseen else "test metrics"
    if pr:
        print(f"promote: {pr['model_name']} v{pr['version']} {pr['decision']} ({pr['why']})")
        print(f"\n== champion v{pr['champion_version']}: {what} ==")
    elif summary:
        print(f"\n== fine-tuned model: {what} ==")
    for k, v in summary.items():
        print(f"  {k:36s} {v:.4f}")
    if results["reused"]:
        print(f"\nreused (same identity as an earlier run): {', '.join(results['reused'])}")
    experiment = store_client().get_experiment(experiment_id).name if experiment_id else cfg.name
    tool = _tool()
    print(f"\nruns: {uri}; parent run {results['parent_run_id']} in experiment '{experiment}'")
    print(f"open the UI:  {tool('mlflow')} ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000")
    print(f"runs table:   {runs_url(experiment_id)}")
    model_uri = pr["champion_uri"] if pr else ft.get("model_uri")
    if model_uri:
        serve = f'{tool("mlflow")} models serve -m "{model_uri}" --env-manager local --host 127.0.0.1 -p 5001'
        print(f"serve it:     {serve}")
        print(
            f'predict:      {tool("albert-exp")} predict --model "{model_uri}" --input reviews.txt --output out.jsonl'
        )
        print(f"lineage:      {tool('albert-exp')} lineage {model_uri}")


def _tool():
    """How to call a command of this environment from here: `.venv/bin/mlflow` after `make demo` (the README
    never asks to activate the venv), the bare name where the environment is on PATH (conda, `mlflow run`)."""
    import os
    import shutil
    import sys

    bindir = Path(sys.executable).parent

    def tool(name: str) -> str:
        path = bindir / name
        if not path.exists() or shutil.which(name) == str(path):
            return name
        try:
            return str(path.relative_to(Path.cwd()))
        except ValueError:
            return os.path.relpath(path) if len(os.path.relpath(path)) < len(str(path)) else str(path)

    return tool
