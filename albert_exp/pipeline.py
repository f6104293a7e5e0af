"""`main`: every stage of an experiment, chained under one MLflow parent run.

    albert-exp main --config experiments/toy.yaml      # what `make demo` and `mlflow run .` run

Stages run in this process, one nested run each, and hand over their outputs (paths, and MLflow artifact URIs
in the parent's tags). Nothing is reused from an earlier invocation: every stage reruns (the Optuna study
is a new one each time). Ends with `promote`: the best trial becomes champion only if it beats the champion.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from albert_exp.config import ExperimentConfig


def run(cfg: ExperimentConfig) -> dict[str, Any]:
    from albert_exp import (
        baseline,
        corpus,
        finetune,
        heldout,
        pretrain,
        pretraining_data,
        promote,
        scratch,
        tune,
        vocab,
    )
    from albert_exp.summary import publish, runs_url
    from albert_exp.tracking import stage_run, tracking_uri, write_results

    t0 = time.time()
    with stage_run(cfg, "main", cfg.name, section="none", extra_params={"stages": ",".join(cfg.stages)}) as parent:
        results: dict[str, Any] = {"parent_run_id": parent.run_id}
        results["corpus"] = corpus.run(cfg)
        results["vocab"] = voc = vocab.run(cfg)
        if "pretrain" in cfg.stages:
            results["pretraining_data"] = pretraining_data.run(cfg)
            if heldout.applies(cfg):  # toy: held-out TFRecords, so that the pretrain run draws an eval curve
                held = heldout.make(cfg, voc["tokenizer_dir"])
                cfg = dataclasses.replace(cfg, pretrain=dataclasses.replace(cfg.pretrain, eval_input=held))
            results["pretrain"] = pt = pretrain.run(cfg)
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
        results["finetune"] = ft = finetune.run(cfg)
        summary = {k: v for k, v in ft.items() if k.startswith("test/")}
        parent.log_metrics(summary, step=0)
        parent.set_tags({"model_uri": ft.get("model_uri", ""), "dataset_digest": ft["dataset_digest"]})
        if scratch.applies(cfg):  # the same fine-tuning from random weights: the pretraining gain
            results["scratch"] = scratch.run(cfg)
        if "baseline" in cfg.stages:  # the classic CRF on the same split: what the ALBERT must beat
            results["baseline"] = bl = baseline.run(cfg)
            parent.log_metrics(baseline.summary_rows(bl), step=0)  # and a row of the summary table
        tuned = pr = None
        if "tune" in cfg.stages:
            # a fresh study per `main` (its name carries the parent run): nothing is reused from an earlier run
            study = cfg.tune.study_name or f"{tune.study_name(cfg)}-{parent.run_id[:8]}"
            results["tune"] = tuned = tune.run(
                dataclasses.replace(cfg, tune=dataclasses.replace(cfg.tune, study_name=study))
            )
            parent.set_tags({"best_trial_model_uri": tuned.get("model_uri", "")})
        if "promote" in cfg.stages:
            # both candidates go through the same rule: the plain fine-tune first, then the search's best trial
            results["promote_finetune"] = promote.run(
                dataclasses.replace(
                    cfg, promote=dataclasses.replace(cfg.promote, run_id=cfg.promote.run_id or ft["run_id"])
                )
            )
            results["promote"] = pr = promote.run(cfg)  # the best trial; champion only if it beats the champion
            summary = {f"test/{k}": v for k, v in pr["champion_metrics"].items()}
            parent.log_metrics({f"champion/{k}": v for k, v in summary.items()}, step=0)
            parent.set_tags({"champion_uri": pr["champion_uri"], "champion_version": pr["champion_version"]})
        results["seconds"] = round(time.time() - t0, 1)
        note = publish(parent, cfg.name, results)
        write_results(cfg.root, results, parent)
    print("\n" + note)
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
    print(f"\nruns: {tracking_uri()}; parent run {results['parent_run_id']} in experiment '{cfg.name}'")
    print(f"open the UI:  mlflow ui --backend-store-uri {tracking_uri()} --host 127.0.0.1 --port 5000")
    print(f"runs table:   {runs_url(parent.experiment_id)}")
    model_uri = pr["champion_uri"] if pr else ft.get("model_uri")
    if model_uri:
        print(f'serve it:     mlflow models serve -m "{model_uri}" --env-manager local --host 127.0.0.1 -p 5001')
        print(f'predict:      albert-exp predict --model "{model_uri}" --input reviews.txt --output out.jsonl')
    return {"print_json": False, **results}
