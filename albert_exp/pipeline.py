"""`main`: every stage of an experiment, chained under one MLflow parent run.

    albert-exp main --config experiments/toy.yaml      # what `make demo` and `mlflow run .` run

Stages run in this process, one nested run each, and hand over their outputs (paths, and MLflow artifact URIs
in the parent's tags). Nothing is reused from an earlier invocation: every stage reruns.
"""

from __future__ import annotations

import time
from typing import Any

from albert_exp.config import ExperimentConfig


def run(cfg: ExperimentConfig) -> dict[str, Any]:
    import mlflow

    from albert_exp import corpus, finetune, vocab
    from albert_exp.tracking import stage_run, write_results

    t0 = time.time()
    with stage_run(cfg, "main", cfg.name, section="none") as parent:
        results: dict[str, Any] = {"parent_run_id": parent.run_id}
        results["corpus"] = corpus.run(cfg)
        results["vocab"] = vocab.run(cfg)
        results["finetune"] = ft = finetune.run(cfg)
        summary = {k: v for k, v in ft.items() if k.startswith("test/")}
        parent.log_metrics(summary, step=ft["best_epoch"])
        parent.set_tags({"model_uri": ft.get("model_uri", ""), "dataset_digest": ft["dataset_digest"]})
        results["seconds"] = round(time.time() - t0, 1)
        write_results(cfg.root, results, parent)
    tracking_uri = mlflow.get_tracking_uri()
    print("\n== final test metrics (dish names never seen in training) ==")
    for k, v in summary.items():
        print(f"  {k:36s} {v:.4f}")
    print(f"\nruns: {tracking_uri}; parent run {results['parent_run_id']} in experiment '{cfg.name}'")
    print(f"open the UI:  mlflow ui --backend-store-uri {tracking_uri} --host 127.0.0.1 --port 5000")
    if ft.get("model_uri"):
        print(f"serve it:     mlflow models serve -m {ft['model_uri']} --env-manager local --host 127.0.0.1 -p 5001")
    return {"print_json": False, **results}
