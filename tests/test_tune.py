"""`tune`: a few fast trials (nested runs, pruning, plots), and resume after a worker is killed mid-trial.

The helpers here (tiny data + overrides) are shared by test_promote.py, test_predict.py and test_team.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

# A model of ~25k parameters on 240 reviews: an epoch takes about a second on one core.
TINY = [
    "corpus.toy=true",
    "stages=[corpus,vocab,finetune,tune,promote]",  # fine-tuning from a fresh model: no pretraining
    "model.embedding_size=16",
    "model.hidden_size=32",
    "model.num_hidden_layers=1",
    "model.num_attention_heads=2",
    "model.intermediate_size=64",
    "model.max_position_embeddings=64",
    "finetune.max_seq_length=48",
    "finetune.batch_size=16",
    "finetune.min_steps=0",  # the epochs a test names, however few steps its tiny split makes (default: 1,000)
    "finetune.torch_threads=1",
    "tune.lr_min=1e-4",
    "tune.lr_max=3e-2",
    "tune.epochs_min=1",
    "tune.epochs_max=3",
]


def make_data(root: Path, *, rows: int = 240, seed: int = 0) -> Path:
    """Toy CSVs and a SentencePiece tokenizer under root/{corpus,vocab} (the default finetune inputs)."""
    from albert_exp import toy
    from albert_exp.corpus_files import write_labelled_csv
    from albert_exp.vocab import build_hf_tokenizer, normalize, train_sentencepiece

    corpus, vocab = root / "corpus", root / "vocab"
    corpus.mkdir(parents=True, exist_ok=True)
    vocab.mkdir(parents=True, exist_ok=True)
    for split, n in {"train": rows, "val": 80, "test": 80}.items():
        reviews = toy.labelled_rows(seed, split, n, 0.5, 2)
        write_labelled_csv(corpus / f"{split}.csv", ((r.text, r.phrases) for r in reviews))
    lines = [s for doc in toy.pretraining_documents(seed, 300) for s in doc]
    train_sentencepiece(
        [normalize(s, lowercase=True, keep_accents=False) for s in lines], vocab / "spiece", 400, "unigram", 1.0
    )
    build_hf_tokenizer(vocab / "spiece.model", vocab / "tokenizer", lowercase=True, keep_accents=False)
    for stage, d in (("corpus", corpus), ("vocab", vocab)):  # complete stage outputs, as far as fine-tuning asks
        (d / "results.json").write_text(json.dumps({"stage": stage, "run_id": None, "key": "test-data"}))
    return root


def cli_args(workdir: Path, *extra: str) -> list[str]:
    return ["--workdir", str(workdir), "--set", " ".join([*TINY, *extra])]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("tune_data"))


def _runs(uri: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exps = [e.experiment_id for e in client.search_experiments()]
    return client, client.search_runs(exps, max_results=1000)


def test_search_nests_trials_prunes_and_logs_best_and_plots(mlflow_store, data_root, tmp_path):
    import optuna

    from albert_exp.cli import main

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    # an explicit study name: the default one carries the git state, which other work in this checkout may change
    args = cli_args(
        data_root,
        "tune.n_trials=6",
        "tune.epochs_min=2",
        f"tune.storage={storage}",
        "tune.pruner_startup_trials=2",  # a study whose only complete trial was lucky prunes every other
        "tune.lr_min=1e-5",
        "tune.study_name=search",
        "jobs=1",  # one trial process (tests/test_tune_parallel.py runs several)
    )
    code = main(["tune", *args])
    assert code == 0
    res = json.loads((data_root / "tune" / "results.json").read_text())
    study = optuna.load_study(study_name=res["study_name"], storage=storage)
    finished = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == 6 and res["n_complete"] + res["n_pruned"] == 6
    assert res["best_value"] == max(t.value for t in study.trials if t.value is not None)
    assert res["model_uri"].startswith("runs:/") and res["best_params"] == study.best_params

    client, runs = _runs(mlflow_store)
    parent = next(r for r in runs if r.data.tags.get("stage") == "tune")
    trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(int(r.data.tags["optuna_trial"]) for r in trials) == list(range(6))
    for r in trials:
        t = study.trials[int(r.data.tags["optuna_trial"])]
        assert float(r.data.params["finetune.learning_rate"]) == pytest.approx(t.params["learning_rate"])
        assert r.data.params["finetune.epochs"] == str(t.params["epochs"])
        steps = [int(m.value) for m in client.get_metric_history(r.info.run_id, "epoch")]
        assert sorted(steps) == sorted(t.intermediate_values) and steps
        # the run's name tells the trials apart at a glance
        lr, ep = t.params["learning_rate"], t.params["epochs"]
        assert r.info.run_name.startswith(f"trial {t.number} lr={lr:.2g} ep={ep}")
        assert r.info.run_name.endswith(" pruned") == (t.state.name == "PRUNED")
        # a pruned trial stopped on purpose: FINISHED (not red as a crash), told apart by its tag and name
        assert r.info.status == "FINISHED"
        if t.state.name == "PRUNED":
            assert r.data.tags.get("pruned") == "true" and len(steps) < t.params["epochs"]
        else:
            assert "pruned" not in r.data.tags and "test/phrase_f1" in r.data.metrics
    # 1e-5 for a fresh model learns nothing in 2 epochs: the median pruner must have cut something
    assert res["n_pruned"] >= 1, res["trials"]
    assert parent.info.status == "FINISHED"
    goal = res["objective"].removeprefix("val/")  # finetune.select_metric (phrase_f1) unless tune.objective is set
    assert parent.data.params["best.learning_rate"] and parent.data.metrics[f"best/val_{goal}"] == res["best_value"]
    # the parent's per-trial curves: completed trials' values only, and the running best at every finished trial
    history = client.get_metric_history(parent.info.run_id, f"trial/val_{goal}")
    assert {m.step: m.value for m in history} == {t.number: t.value for t in finished if t.state.name == "COMPLETE"}
    best = {m.step: m.value for m in client.get_metric_history(parent.info.run_id, f"best/val_{goal}")}
    for n, value in best.items():
        assert value == max(t.value for t in finished if t.state.name == "COMPLETE" and t.number <= n)
    assert best[max(best)] == res["best_value"] and max(best) == max(t.number for t in finished)
    # the search space, not the base values, as the tune run's params
    assert parent.data.params["space.learning_rate"] == "log-uniform [1e-05, 0.03]"
    assert parent.data.params["space.epochs"] == "int [2, 3]"
    assert "finetune.learning_rate" not in parent.data.params and "finetune.epochs" not in parent.data.params
    plots = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert {
        "plots/optimization_history.png",
        "plots/intermediate_values.png",
        "plots/param_importances.png",
        "plots/contour_lr_epochs.png",
    } <= plots

    # a rerun of the same study with nothing left to do starts no trial and reports the same best
    assert main(["tune", *args]) == 0
    again = json.loads((data_root / "tune" / "results.json").read_text())
    assert again["study_name"] == res["study_name"] and again["this_worker_trials"] == []
    assert again["best_trial"] == res["best_trial"]


def test_other_inputs_make_another_study(data_root):
    from albert_exp.config import load_config
    from albert_exp.tune import study_name

    base = load_config(None, [*TINY, f"workdir={data_root}"])
    assert study_name(base) == study_name(load_config(None, [*TINY, f"workdir={data_root}"]))
    assert study_name(base) != study_name(load_config(None, [*TINY, f"workdir={data_root}", "finetune.batch_size=8"]))
    assert study_name(base) != study_name(load_config(None, [*TINY, f"workdir={data_root}", "tune.lr_max=0.5"]))


def test_bad_storage_is_a_user_error(mlflow_store, data_root, capsys):
    from albert_exp.cli import main

    assert main(["tune", *cli_args(data_root, "tune.storage=optuna.db")]) == 2
    assert "tune.storage" in capsys.readouterr().err


def _wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"worker exited ({proc.returncode}) before {what}: {proc.stdout.read()[-3000:]}")
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


FINISHED = ("COMPLETE", "PRUNED")


def tune_cmd(workdir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "albert_exp", "tune", *cli_args(workdir, *extra)]


def test_kill_mid_trial_then_rerun_resumes_the_study(mlflow_store, data_root, tmp_path):
    """SIGKILL a worker inside trial 1 and rerun it at once (well within the heartbeat grace period): the rerun
    knows the worker's process on this host is gone, fails the trial, closes its MLflow runs, retries it from its
    checkpoint and finishes the study without repeating a finished trial's parameters. No run is left RUNNING."""
    import optuna

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    extra = [
        "tune.n_trials=3",
        "tune.epochs_min=3",
        "tune.heartbeat_s=10",
        "tune.grace_s=300",
        "tune.pruner_startup_trials=5",
        f"tune.storage={storage}",
        "tune.study_name=killed",
        "jobs=1",
    ]
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_store}
    proc = subprocess.Popen(
        tune_cmd(data_root, *extra), cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:

        def trial1_has_an_epoch():
            try:
                trials = optuna.load_study(study_name="killed", storage=storage).trials
            except KeyError:
                return False
            return len(trials) > 1 and trials[1].state.name == "RUNNING" and trials[1].intermediate_values

        _wait_for(trial1_has_an_epoch, 240, "trial 1's first epoch", proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    client, runs = _runs(mlflow_store)
    assert any(r.info.status == "RUNNING" for r in runs)  # what a SIGKILL leaves behind

    out = subprocess.run(
        tune_cmd(data_root, *extra), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    study = optuna.load_study(study_name="killed", storage=storage)
    states = [t.state.name for t in study.trials]
    assert states[1] == "FAIL" and states.count("COMPLETE") + states.count("PRUNED") == 3, states
    retry = next(t for t in study.trials if t.system_attrs.get("failed_trial") == 1)
    assert retry.params == study.trials[1].params and retry.state.name == "COMPLETE"
    assert retry.intermediate_values[1] == study.trials[1].intermediate_values[1]  # inherited, then resumed
    client, runs = _runs(mlflow_store)
    assert not [r.info.run_id for r in runs if r.info.status == "RUNNING"]
    dead_worker = [r for r in runs if r.data.tags.get("stage") == "tune" and r.info.status == "KILLED"]
    assert len(dead_worker) == 1 and "is gone" in dead_worker[0].data.tags["killed_reason"]
    # the retry resumed trial 1's training in trial 1's run: one run, one continuous history
    (resumed,) = [r for r in runs if r.data.tags.get("optuna_retry_of") == "1"]
    assert resumed.info.status == "FINISHED" and "is gone" in resumed.data.tags["albert_exp.resumed_after"]
    steps = [m.step for m in client.get_metric_history(resumed.info.run_id, "val/token_accuracy")]
    assert len(steps) == len(set(steps)) == retry.params["epochs"]  # one value per epoch, none twice
    finished = [(t.params["learning_rate"], t.params["epochs"]) for t in study.trials if t.state.name in FINISHED]
    assert len(set(finished)) == len(finished), finished
    assert not (data_root / "tune" / "killed" / f"trial_{retry.number}").exists(), "the retry reuses trial_1/"


def test_a_trial_with_a_finished_trials_parameters_is_pruned_before_training(tmp_path):
    import optuna

    from albert_exp import tune
    from albert_exp.config import load_config

    cfg = load_config(None, ["tune.lr_min=0.001", "tune.lr_max=0.01", "tune.epochs_min=1", "tune.epochs_max=3"])
    study = optuna.create_study(direction="maximize")
    point = {"learning_rate": 0.002, "epochs": 2}
    study.enqueue_trial(point)
    study.optimize(lambda t: t.suggest_float("learning_rate", 0.001, 0.01, log=True) + t.suggest_int("epochs", 1, 3), 1)
    assert tune.duplicate_of(study, point) == 0 and tune.duplicate_of(study, {**point, "epochs": 3}) is None
    study.enqueue_trial(point)  # as a sampler with a repeated seed would draw it
    study.optimize(tune.make_objective(cfg, tmp_path, None, run_stage=None), 1)  # would fail if it reached training
    again = study.trials[-1]
    assert again.state == optuna.trial.TrialState.PRUNED and again.user_attrs["duplicate_of"] == 0
    assert not any(tmp_path.iterdir())  # nothing trained, no trial directory
