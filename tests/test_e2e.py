"""End to end: `main` on a small toy setting, checked through MLflow, the pyfunc, and HTTP serving."""

from __future__ import annotations

import json
import urllib.request

import pandas as pd
import pytest

from tests.conftest import ROOT, served_model, tracking_in

# The toy experiment as `make demo` runs it (its pretraining and fine-tuning), with smaller val/test splits and a
# two-trial search. A shorter pretraining (120 steps) left a model that fine-tuned worse than from scratch.
SMALL = [
    "corpus.toy_val_rows=300",
    "corpus.toy_test_rows=300",
    "tune.n_trials=2",
    "tune.epochs_min=1",
    "tune.epochs_max=1",
    "tune.lr_min=1e-3",
    "tune.lr_max=3e-3",
    "stages=[corpus,vocab,pretraining-data,pretrain,finetune,tune,promote]",  # scratch: tests/test_summary.py
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from albert_exp.cli import main

    tmp = tmp_path_factory.mktemp("e2e")
    with tracking_in(tmp) as uri:
        code = main(
            [
                "main",
                "--config",
                str(ROOT / "experiments" / "toy.yaml"),
                "--workdir",
                str(tmp / "runs"),
                "--set",
                " ".join(SMALL),
            ]
        )
        assert code == 0
        results = json.loads((tmp / "runs" / "results.json").read_text())
        yield {"uri": uri, "tmp": tmp, "results": results}


def ft_param(children, key):
    return children["finetune"].data.params[key]


def test_runs_params_metrics_and_artifacts_are_in_mlflow(trained):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(trained["uri"])
    exp = client.get_experiment_by_name("toy")
    runs = client.search_runs([exp.experiment_id])
    parent = next(r for r in runs if r.data.tags.get("stage") == "main")
    children = {r.data.tags["stage"]: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert {"corpus", "vocab", "pretraining-data", "pretrain", "finetune", "tune", "promote"} <= set(children)
    # fine-tuning started from the weights the pretrain stage produced
    assert ft_param(children, "finetune.model_dir") == parent.data.tags["pretrained_model_dir"]
    assert "train/loss" in children["pretrain"].data.metrics
    assert all(r.info.status == "FINISHED" for r in runs)
    ft = children["finetune"]
    assert ft.data.params["finetune.epochs"] == "8" and "derived.parameters" in ft.data.params
    assert ft.data.tags["git_commit"] and ft.data.tags["experiment_config"].endswith("toy.yaml")
    # one step meaning in the run (the optimizer step); the epoch is a metric of its own
    epochs = {m.step: m.value for m in client.get_metric_history(ft.info.run_id, "epoch")}
    assert sorted(epochs.values()) == list(range(1, 9))
    assert {m.step for m in client.get_metric_history(ft.info.run_id, "val/token_accuracy")} == set(epochs)
    for key in (
        "finetune/train_loss",
        "val/loss",
        "val/phrase_f1",
        "val/phrase_precision",
        "val/phrase_recall",
        "val/negative_fp_rate",
        "test/token_accuracy",
        "test/phrase_f1",
    ):
        assert key in ft.data.metrics, key
    artifacts = {a.path for a in client.list_artifacts(ft.info.run_id)}
    assert {"config", "hf_model", "results.json", "history.json"} <= artifacts
    # the three splits as datasets, and every input with its content digest (lineage), the pretrained model too
    names = [d.dataset.name for d in ft.inputs.dataset_inputs]
    assert {"train.csv", "val.csv", "test.csv", "train", "val", "test", "tokenizer", "model"} == set(names)
    assert ft.data.tags["upstream.pretrain"] == children["pretrain"].info.run_id
    assert children["corpus"].data.tags["corpus_sha256"] and ft.data.tags["dataset_digest"]


def test_tagger_beats_the_all_negative_baseline_on_unseen_dishes(trained):
    r = trained["results"]["finetune"]
    assert r["test/token_accuracy"] > r["test/all_negative_token_accuracy"] + 0.1
    assert r["test/phrase_f1"] >= 0.8
    assert r["test/negative_fp_rate"] <= 0.1


def test_pyfunc_extracts_phrases(trained):
    import mlflow

    mlflow.set_tracking_uri(trained["uri"])
    model = mlflow.pyfunc.load_model(trained["results"]["finetune"]["model_uri"])
    out = model.predict(
        pd.DataFrame({"text": ["I ordered the smoked duck ramen and it was superb.", "The waiter was lovely."]})
    )
    assert list(out.columns) == ["phrases", "spans", "tokens"]
    assert [p.lower() for p in out["phrases"][0]] == ["smoked duck ramen"]
    assert list(out["phrases"][1]) == []
    span = out["spans"][0][0]
    assert "I ordered the smoked duck ramen"[span["start"] : span["end"]].lower() == "smoked duck ramen"


def test_served_model_answers_over_http_on_loopback(trained):
    uri = trained["results"]["finetune"]["model_uri"]
    with served_model(uri, trained["uri"], trained["tmp"], timeout_s=120) as port:
        body = json.dumps({"dataframe_records": [{"text": "Highly recommend the crispy tofu bao."}]}).encode()
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", data=body, headers={"Content-Type": "application/json"}
        )
        answer = json.loads(urllib.request.urlopen(req, timeout=30).read())
        phrases = answer["predictions"][0]["phrases"]
        assert [p.lower() for p in phrases] == ["crispy tofu bao"]
