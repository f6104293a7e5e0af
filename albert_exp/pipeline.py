"""`main`: every stage of an experiment, chained under one MLflow parent run.

    albert-exp main --config experiments/toy.yaml                    # what `make demo` and `mlflow run .` run
    albert-exp main --config experiments/toy.yaml --rerun finetune   # recompute fine-tuning (and what follows)

Stages run in this process, one child run each, and hand over their outputs (paths, and MLflow artifact URIs in
the parent's tags). Ends with `promote`: the best trial becomes champion only if it beats the champion.

Reuse rule. A stage whose identity (albert_exp/identity.py: its own settings, the content digests of its
inputs, the code version) matches a complete earlier output is not computed again: `main` prints
`<stage>: reusing run <id>`, and the stage's child run in the new parent is tagged `reused_run_id` with the run
that computed it. Anything else is computed (or resumed, when a killed run left a partial output with the same
identity). `--rerun STAGE[,STAGE]|all` computes the named stages again whatever they match; the stages after
them see new inputs only if the recomputed output differs.

The same rule holds for a stage command run alone (`standalone`: `albert-exp corpus|vocab|pretraining-data|
pretrain|finetune|baseline`, with `--rerun`), except that a reuse there prints the line and opens no run. The
comparison rows are stages like the others: `scratch` (fine-tuning's identity under scratch.scratch_config) and
`baseline` (its section, the labelling settings and the split).

Why this way: mlflow's examples/multistep_workflow `_already_ran` looks for an earlier run with the same entry
point, parameters and git commit and reuses it. We keep that search (a FINISHED run of the stage tagged with the
same identity key), with a key that also covers the input *contents* (the example's check would reuse a run
whose input files changed under the same parameters), and we require its output to be complete on disk (the
example trusts the run alone; our next stage reads the files). Promotion is reused only while the champion is
the one that earlier decision left.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from albert_exp.config import MAIN_STAGES, ExperimentConfig
from albert_exp.errors import UserError

SECTIONS = {"scratch": "finetune"}  # the config section whose settings a stage's run shows (default: its own)


def parse_rerun(text: str) -> set[str]:
    names = {s.strip() for s in (text or "").split(",") if s.strip()}
    if "all" in names:
        return set(MAIN_STAGES)
    unknown = names - set(MAIN_STAGES)
    if unknown:
        raise UserError(
            f"unknown stage(s) {sorted(unknown)} in --rerun",
            where="--rerun",
            fix=f"name stages among {', '.join(MAIN_STAGES)}, or `all`",
        )
    return names


def _reuse(cfg: ExperimentConfig, stage: str, key: str, results_of: Callable[[Any], dict | None]) -> dict | None:
    """The results of an earlier run of `stage` with identity `key` whose output is still complete, recorded by a
    new child run tagged with it; None when there is none (the stage is then computed)."""
    from albert_exp.tracking import REUSED, find_finished_run, stage_run

    earlier = find_finished_run(cfg.name, stage, key)
    results = results_of(earlier) if earlier is not None else None
    if results is None:
        return None
    upstream = {k: v for k, v in earlier.tags.items() if k.startswith("upstream.")}
    section = SECTIONS.get(stage, stage.replace("-", "_"))
    with stage_run(cfg, stage, f"reuses {earlier.run_id[:8]}", section=section) as tracker:
        tracker.set_tags({REUSED: earlier.run_id, "reused_key": key, **upstream})
    print(f"{stage}: reusing run {earlier.run_id} (same settings, inputs and code; `--rerun {stage}` recomputes it)")
    return {**results, "reused_run_id": earlier.run_id}


def output_link(cfg: ExperimentConfig, stage: str) -> Path:
    """The path that names a stage's current output (a link to `<link>@<identity>`)."""
    from albert_exp import pretrain, pretraining_data, scratch

    links = {
        "pretraining-data": pretraining_data.output_link,
        "pretrain": pretrain.output_link,
        "scratch": scratch.output_link,
    }
    return links[stage](cfg) if stage in links else cfg.stage_dir(stage)


def _complete(cfg: ExperimentConfig, stage: str, output: Any, earlier: Any) -> dict | None:
    """The results of `output` if it is complete on disk, was computed by the run `earlier` and is all that `cfg`
    asks for (a pretraining stopped before the step asked for is continued instead); the link then names it."""
    from albert_exp.identity import reached

    done = output.complete()
    if done is None or done.get("run_id") != earlier.run_id or not reached(cfg, stage, done):
        return None
    output.point()  # the stage's path names the reused output again
    return done


def _fresh(cfg: ExperimentConfig, stage: str, output: Any) -> ExperimentConfig:
    """`cfg` for a forced recomputation: from the start, not from a killed run's partial output nor (pretraining)
    from the complete output's last checkpoint."""
    import shutil

    if stage == "pretrain":  # it clears the work directory itself, on rank 0 alone under torchrun
        return dataclasses.replace(cfg, pretrain=dataclasses.replace(cfg.pretrain, resume=False))
    shutil.rmtree(output.work, ignore_errors=True)
    return cfg


def _output_stage(cfg: ExperimentConfig, stage: str, compute: Callable, forced: set[str]) -> dict:
    """A stage with an output directory: reused when complete under the same key, else computed."""
    from albert_exp.identity import output_of

    output = output_of(cfg, stage, output_link(cfg, stage))
    if stage in forced:
        return compute(_fresh(cfg, stage, output))
    reused = _reuse(cfg, stage, output.key, lambda earlier: _complete(cfg, stage, output, earlier))
    return reused if reused is not None else compute(cfg)


def _with_heldout(cfg: ExperimentConfig, tokenizer_dir: str | Path) -> ExperimentConfig:
    """The toy's pretraining evaluates on held-out TFRecords (albert_exp/heldout.py), in `main` and alone."""
    from albert_exp import heldout

    held = heldout.make(cfg, str(tokenizer_dir))
    return dataclasses.replace(cfg, pretrain=dataclasses.replace(cfg.pretrain, eval_input=held))


def standalone(stage: str, cfg: ExperimentConfig, compute: Callable, rerun: bool = False) -> dict:
    """`albert-exp <stage>` on its own, with `main`'s rule: a complete output with the same identity, computed by
    a FINISHED run of this store, is reused (a line says so; no new run); a killed run's partial output of the
    same identity is resumed into its run; anything else is computed. `--rerun` computes it again from the start
    (the earlier output stays, renamed)."""
    from albert_exp import heldout
    from albert_exp.identity import output_of
    from albert_exp.tracking import find_finished_run

    tokenizer = cfg.stage_dir("vocab") / "tokenizer"
    if stage == "pretrain" and heldout.applies(cfg) and tokenizer.is_dir():  # the same eval data as in `main`
        cfg = _with_heldout(cfg, tokenizer)
    output = output_of(cfg, stage, output_link(cfg, stage))
    if rerun:
        return compute(_fresh(cfg, stage, output))
    # the disk first: a stage with nothing complete on disk never needs the tracking store to decide
    earlier = find_finished_run(cfg.name, stage, output.key) if output.complete() is not None else None
    results = _complete(cfg, stage, output, earlier) if earlier is not None else None
    if results is None:
        return compute(cfg)
    print(
        f"{stage}: reusing run {earlier.run_id}: {output.done} is complete with the same settings, inputs and "
        "code (`--rerun` computes it again)"
    )
    return {**results, "reused_run_id": earlier.run_id}


def _artifact_results(earlier: Any) -> dict | None:
    from albert_exp.tracking import download_artifacts

    try:
        return json.loads(Path(download_artifacts(f"runs:/{earlier.run_id}/results.json")).read_text())
    except Exception:  # no results artifact (a run from before this rule): compute again
        return None


def _tune(cfg: ExperimentConfig, forced: set[str], parent_id: str) -> dict:
    from albert_exp import tune

    name = tune.study_name(cfg)
    if "tune" in forced:  # a new study: the earlier one stays as it is
        name = f"{name}-{parent_id[:8]}"
    elif not cfg.tune.study_name and tune.holds_base(tune.checked_study(cfg, name), cfg):
        # (another finetune.learning_rate or epochs: the study gets that trial, not reused without it)
        reused = _reuse(cfg, "tune", name, _artifact_results)
        if reused is not None:
            return reused
    return tune.run(dataclasses.replace(cfg, tune=dataclasses.replace(cfg.tune, study_name=name)))


def _promote(cfg: ExperimentConfig, forced: set[str]) -> dict:
    from albert_exp import promote
    from albert_exp.tracking import Registry

    if "promote" not in forced:
        champion = Registry().by_alias(promote.model_name(cfg), "champion")

        def unchanged(earlier: Any) -> dict | None:  # the champion is still the one that decision left
            results = _artifact_results(earlier)
            same = results and champion is not None and str(results["champion_version"]) == str(champion.version)
            return results if same else None

        reused = _reuse(cfg, "promote", promote.key(cfg), unchanged)
        if reused is not None:
            return reused
    return promote.run(cfg)


def run(cfg: ExperimentConfig, rerun: str = "") -> dict[str, Any]:
    from albert_exp import baseline, corpus, finetune, heldout, pretrain, pretraining_data, scratch, vocab
    from albert_exp.summary import publish
    from albert_exp.tracking import stage_run, tracking_uri, write_results

    forced = parse_rerun(rerun)
    t0 = time.time()
    with stage_run(cfg, "main", cfg.name, section="none", extra_params={"stages": ",".join(cfg.stages)}) as parent:
        parent.set_tags({"rerun": ",".join(sorted(forced))})
        results: dict[str, Any] = {"parent_run_id": parent.run_id}
        results["corpus"] = _output_stage(cfg, "corpus", corpus.run, forced)
        results["vocab"] = voc = _output_stage(cfg, "vocab", vocab.run, forced)
        if "pretrain" in cfg.stages:
            results["pretraining_data"] = _output_stage(cfg, "pretraining-data", pretraining_data.run, forced)
            if heldout.applies(cfg):  # toy: held-out TFRecords, so that the pretrain run draws an eval curve
                cfg = _with_heldout(cfg, voc["tokenizer_dir"])
            results["pretrain"] = pt = _output_stage(cfg, "pretrain", pretrain.run, forced)
            # fine-tuning (and every trial) starts from the pretrained weights, with the vocabulary they know
            cfg = dataclasses.replace(
                cfg,
                finetune=dataclasses.replace(
                    cfg.finetune,
                    model_dir=cfg.finetune.model_dir or pt["model_dir"],
                    tokenizer_dir=cfg.finetune.tokenizer_dir or voc["tokenizer_dir"],
                ),
            )
            parent.set_tags({"pretrained_model_dir": pt["model_dir"]})
        results["finetune"] = ft = _output_stage(cfg, "finetune", finetune.run, forced)
        summary = {k: v for k, v in ft.items() if k.startswith("test/")}
        parent.log_metrics(summary, step=0)
        parent.set_tags({"model_uri": ft.get("model_uri", ""), "dataset_digest": ft["dataset_digest"]})
        if scratch.applies(cfg):  # the same fine-tuning from random weights: the pretraining gain
            results["scratch"] = _output_stage(cfg, "scratch", scratch.run, forced)
        if "baseline" in cfg.stages:  # the classic CRF on the same split: what the ALBERT must beat
            results["baseline"] = bl = _output_stage(cfg, "baseline", baseline.run, forced)
            parent.log_metrics(baseline.summary_rows(bl), step=0)  # and a row of the summary table
        tuned = pr = None
        if "tune" in cfg.stages:
            results["tune"] = tuned = _tune(cfg, forced, parent.run_id)
            parent.set_tags({"best_trial_model_uri": tuned.get("model_uri", "")})
        if "promote" in cfg.stages:
            # both candidates go through the same rule: the plain fine-tune first, then the search's best trial
            first = dataclasses.replace(
                cfg, promote=dataclasses.replace(cfg.promote, run_id=cfg.promote.run_id or ft["run_id"])
            )
            results["promote_finetune"] = _promote(first, forced)
            best = dataclasses.replace(
                cfg, promote=dataclasses.replace(cfg.promote, run_id=cfg.promote.run_id or tuned["mlflow_run_id"])
            )
            results["promote"] = pr = _promote(best, forced)  # champion only if it beats the champion
            summary = {f"test/{k}": v for k, v in pr["champion_metrics"].items()}
            parent.log_metrics({f"champion/{k}": v for k, v in summary.items()}, step=0)
            parent.set_tags({"champion_uri": pr["champion_uri"], "champion_version": pr["champion_version"]})
        results["reused"] = [s for s, r in results.items() if isinstance(r, dict) and r.get("reused_run_id")]
        results["seconds"] = round(time.time() - t0, 1)
        parent.set_tags({"reused_stages": ",".join(results["reused"])})
        note = publish(parent, cfg.name, results)
        write_results(cfg.root, results, parent)
    print("\n" + note)
    _report(cfg, results, tuned, pr, summary, ft, tracking_uri(), parent.experiment_id)
    return {"print_json": False, **results}


def _report(cfg, results, tuned, pr, summary, ft, uri, experiment_id) -> None:
    from albert_exp.summary import runs_url

    if tuned:
        print(
            f"\nsearch: best trial {tuned['best_trial']} lr={tuned['best_params']['learning_rate']:.3g} "
            f"epochs={tuned['best_params']['epochs']} val={tuned['best_value']:.4f}, {tuned['n_pruned']} pruned"
        )
    if pr:
        print(f"promote: {pr['model_name']} v{pr['version']} {pr['decision']} ({pr['why']})")
        print(f"\n== champion v{pr['champion_version']}: test metrics (dish names never seen in training) ==")
    else:
        print("\n== fine-tuned model: test metrics (dish names never seen in training) ==")
    for k, v in summary.items():
        print(f"  {k:36s} {v:.4f}")
    if results["reused"]:
        print(f"\nreused (same identity as an earlier run): {', '.join(results['reused'])}")
    print(f"\nruns: {uri}; parent run {results['parent_run_id']} in experiment '{cfg.name}'")
    print(f"open the UI:  mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000")
    print(f"runs table:   {runs_url(experiment_id)}")
    model_uri = pr["champion_uri"] if pr else ft.get("model_uri")
    if model_uri:
        print(f'serve it:     mlflow models serve -m "{model_uri}" --env-manager local --host 127.0.0.1 -p 5001')
        print(f'predict:      albert-exp predict --model "{model_uri}" --input reviews.txt --output out.jsonl')
        print(f"lineage:      albert-exp lineage {model_uri}")
