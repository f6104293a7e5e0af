"""What the MLflow UI shows after `main` (#11): the summary note, gain metrics, trial names, the model's metrics.

The unit tests check the summary's plain functions; `small_main` runs `main` once on a tiny model (about a minute
on one core) and the tests read back through MLflow's API what the UI will render.
"""

from __future__ import annotations

import json

import pytest

from albert_exp import summary
from tests.conftest import ROOT, tracking_in
from tests.test_tune import TINY

PRE = {"run_id": "a" * 32, "test/token_accuracy": 0.99, "test/phrase_f1": 0.90, "best_epoch": 3}
SCR = {"run_id": "b" * 32, "test/token_accuracy": 0.96, "test/phrase_f1": 0.70}


def test_gain_is_pretrained_minus_scratch_for_shared_test_metrics():
    g = summary.gains(PRE, {**SCR, "test/only_here": 1.0})
    assert g == pytest.approx({"gain/test/token_accuracy": 0.03, "gain/test/phrase_f1": 0.20})


def test_markdown_names_candidates_best_trial_and_champion_with_links():
    tuned = {
        "best_trial": 2,
        "best_params": {"learning_rate": 3.5e-4, "epochs": 6},
        "best_value": 0.97,
        "objective": "val/token_accuracy",
        "mlflow_run_id": "c" * 32,
        "test/token_accuracy": 0.995,
        "n_complete": 3,
        "n_pruned": 1,
    }
    promote = {
        "model_name": "toy-phrase-tagger",
        "version": 2,
        "champion_version": 2,
        "source_run_id": "c" * 32,
        "champion_metrics": {"token_accuracy": 0.995, "phrase_f1": 0.93},
        "decision": "promoted",
        "why": "challenger 0.995 > champion 0.99",
    }
    baseline = {"run_id": "d" * 32, "test/phrase_f1": 0.8}
    results = {"finetune": PRE, "scratch": SCR, "baseline": baseline, "tune": tuned, "promote": promote}
    text = summary.markdown("toy", results, experiment_id="7")
    # the first line (all the collapsed banner shows) answers the three questions
    assert text.splitlines()[0] == (
        "toy: **Champion** v2 (best trial): test token acc 0.9950, phrase F1 0.9300 · **best lr** 0.00035, "
        "**epochs** 6 (trial 2) · **pretraining gain** vs scratch: acc +0.0300, F1 +0.2000"
    )
    assert "`toy-phrase-tagger` v2 ([its run](#/experiments/7/runs/" + "c" * 32 + "))" in text
    assert "trial 2 lr=0.00035 epochs=6" in text
    assert "phrase f1 +0.2000" in text
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert [r.split(" | ")[0] for r in rows] == [
        "| candidate (test split)",
        "| ALBERT pretrained",
        "| ALBERT from scratch",
        "| CRF baseline",
        "| best trial (trial 2 lr=0.00035 epochs=6)",
    ]
    assert "| CRF baseline | – | 0.8000 |" in text  # a metric a candidate lacks is a dash, not a zero


def test_runs_url_opens_the_model_training_view():
    assert summary.runs_url("3") == "http://127.0.0.1:5000/#/experiments/3/runs?workflowType=machine_learning"


SMALL = [
    *TINY,
    "stages=[corpus,vocab,pretraining-data,pretrain,finetune,scratch,baseline,tune,promote]",  # every stage
    "corpus.toy_documents=300",
    "corpus.toy_train_rows=240",
    "corpus.toy_val_rows=80",
    "corpus.toy_test_rows=80",
    "vocab.vocab_size=400",
    "pretraining_data.dupe_factor=1",
    "pretraining_data.workers=1",
    "pretrain.batch_size=16",
    "pretrain.num_train_steps=30",
    "pretrain.num_warmup_steps=3",
    "pretrain.save_checkpoints_steps=15",
    "pretrain.log_every_steps=5",
    "pretrain.eval_every_steps=10",
    "pretrain.eval_batches=2",
    "pretrain.max_seq_length=48",
    "pretraining_data.max_seq_length=48",
    "finetune.epochs=2",
    "tune.n_trials=2",
    "tune.epochs_min=1",
    "tune.epochs_max=2",
    "promote.model_name=ui-tagger",
]


@pytest.fixture(scope="module")
def small_main(tmp_path_factory):
    from mlflow import MlflowClient

    from albert_exp.cli import main

    tmp = tmp_path_factory.mktemp("ui")
    with tracking_in(tmp) as uri:
        argv = ["main", "--config", str(ROOT / "experiments" / "toy.yaml"), "--workdir", str(tmp / "runs")]
        assert main([*argv, "--set", " ".join(SMALL)]) == 0
        client = MlflowClient(uri)
        exp = client.get_experiment_by_name("toy")
        runs = client.search_runs([exp.experiment_id], max_results=500)
        parent = next(r for r in runs if r.data.tags.get("stage") == "main")
        yield {
            "client": client,
            "exp": exp,
            "runs": runs,
            "parent": parent,
            "results": json.loads((tmp / "runs" / "results.json").read_text()),
        }


def test_parent_and_experiment_carry_the_summary_and_the_gain(small_main):
    parent, exp, res = small_main["parent"], small_main["exp"], small_main["results"]
    note = parent.data.tags[summary.NOTE]
    assert note == exp.tags[summary.NOTE]  # the banner above the runs table
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    assert "**Champion**: `ui-tagger` v" in note and "**Pretraining gain**" in note
    for key in ("test/token_accuracy", "test/phrase_f1"):
        gain = parent.data.metrics[f"gain/{key}"]
        assert gain == pytest.approx(res["finetune"][key] - res["scratch"][key])
    scratch = next(r for r in small_main["runs"] if r.data.tags.get("stage") == "scratch")
    assert scratch.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert scratch.data.params["finetune.model_dir"] in ("", "None")  # random initial weights
    assert scratch.info.run_id in note and res["finetune"]["run_id"] in note


def test_the_finetune_config_is_the_first_trial_when_inside_the_space():
    import optuna

    from albert_exp.config import load_config
    from albert_exp.tune import enqueue_base

    cfg = load_config(ROOT / "experiments" / "toy.yaml")
    study = optuna.create_study(direction="maximize")
    assert enqueue_base(study, cfg)
    first = study.ask()
    lr = first.suggest_float("learning_rate", cfg.tune.lr_min, cfg.tune.lr_max, log=True)
    assert (lr, first.suggest_int("epochs", cfg.tune.epochs_min, cfg.tune.epochs_max)) == (
        cfg.finetune.learning_rate,
        cfg.finetune.epochs,
    )
    assert not enqueue_base(study, cfg)  # a study that holds it (a rerun) gets no second copy
    other = load_config(ROOT / "experiments" / "toy.yaml", [f"finetune.epochs={cfg.finetune.epochs - 1}"])
    assert enqueue_base(study, other)  # a rerun with another base config: it becomes one more trial
    assert study.get_trials()[-1].system_attrs["fixed_params"]["epochs"] == cfg.finetune.epochs - 1
    outside = load_config(ROOT / "experiments" / "toy.yaml", ["tune.epochs_max=3"])
    assert not enqueue_base(optuna.create_study(direction="maximize"), outside)


def _stage(small_main, stage):
    return next(r for r in small_main["runs"] if r.data.tags.get("stage") == stage)


def test_trial_runs_have_distinct_names(small_main):
    trials = [r for r in small_main["runs"] if "optuna_trial" in r.data.tags]
    names = [r.info.run_name for r in trials]
    assert len(trials) == 2 and len(set(names)) == 2
    assert all(n.startswith(f"trial {r.data.tags['optuna_trial']} lr=") for n, r in zip(names, trials, strict=True))


def test_logged_model_carries_the_best_epochs_metrics(small_main):
    client, ft = small_main["client"], _stage(small_main, "finetune")
    (output,) = ft.outputs.model_outputs
    metrics = {m.key: m.value for m in client.get_logged_model(output.model_id).metrics}
    assert metrics["epoch"] == small_main["results"]["finetune"]["best_epoch"]
    assert metrics["test/token_accuracy"] == pytest.approx(small_main["results"]["finetune"]["test/token_accuracy"])
    assert "val/token_accuracy" in metrics and "finetune/batch_loss" not in metrics
    # row counts are params, not charts
    assert ft.data.params["data.train_rows"] == "240" and not any(k.startswith("data/") for k in ft.data.metrics)
    assert int(ft.data.params["data.train_augmented_rows"]) > 0  # finetune.augment_mentions: 1 by default


def test_one_digest_per_dataset_in_inputs_tags_and_registry(small_main):
    client, ft = small_main["client"], _stage(small_main, "finetune")
    test_sha = ft.data.tags["data.test_sha256"]
    digests = {d.dataset.name: d.dataset.digest for d in ft.inputs.dataset_inputs}
    assert digests["test.csv"] == test_sha[:12]
    splits = [d for d in ft.inputs.dataset_inputs if d.dataset.name.endswith(".csv")]  # (model/tokenizer: digests)
    assert sorted(d.dataset.name for d in splits) == ["test.csv", "train.csv", "val.csv"]
    for d in splits:  # the logged datasets carry the labels, not only the text
        assert {"text", "phrase"} <= {c["name"] for c in json.loads(d.dataset.schema)["mlflow_colspec"]}
    promote = small_main["results"]["promote"]
    assert promote["eval_digest"] == test_sha
    model = client.get_registered_model("ui-tagger")
    assert model.tags["eval_digest"] == test_sha and model.tags["champion_version"] == str(promote["champion_version"])
    assert model.description.startswith(f"Champion: v{promote['champion_version']}, token accuracy ")
    version = client.get_model_version("ui-tagger", str(promote["version"]))
    assert f"token accuracy, test.csv sha256 {test_sha[:12]}…" in version.description


def test_pretrain_run_logs_its_best_weights_and_a_held_out_curve(small_main):
    client, pt = small_main["client"], _stage(small_main, "pretrain")
    curve = client.get_metric_history(pt.info.run_id, "eval/loss")
    assert sorted(m.step for m in curve) == [10, 20, 30]  # eval_every_steps on the held-out toy documents
    best = {a.path for a in client.list_artifacts(pt.info.run_id, "best")}
    assert "best/model.safetensors" in best
    assert not any(r.data.tags.get("stage") == "corpus" and "heldout" in str(r.data.params) for r in small_main["runs"])
