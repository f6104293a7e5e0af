"""What a user reads first: epoch lines and progress bars that name their run (finetune, scratch, a search's
trial), and run pages whose first charts are the curves (MLflow 3 orders a run page's chart sections by name and
draws a metric whose latest step is 0 as a bar, one at a later step as a curve)."""

from __future__ import annotations

import json
import re

import pytest

from tests.test_tune import cli_args, make_data

EPOCH = re.compile(
    r"^(.+) epoch (\d+)/(\d+): train loss [\d.]+, val phrase_f1 [\d.]+, token_accuracy [\d.]+; best epoch \d+$"
)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("terminal_data"), rows=48)


@pytest.fixture
def bars(monkeypatch):
    """The descriptions of the progress bars fine-tuning opens (tqdm draws none when its output is not a terminal)."""
    import tqdm

    opened: list[str] = []

    class Recording(tqdm.tqdm):  # a class, as tqdm is: libraries importing it meanwhile annotate with it
        def __init__(self, *args, **kwargs):
            opened.append(kwargs.get("desc", ""))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(tqdm, "tqdm", Recording)
    return opened


def _epoch_lines(out: str) -> list[tuple[str, int, int]]:
    return [(m[1], int(m[2]), int(m[3])) for line in out.splitlines() if (m := EPOCH.match(line))]


def test_epoch_lines_and_bars_name_the_stage_and_the_trial(mlflow_store, data_root, tmp_path, capsys, bars):
    from albert_exp.cli import main

    assert main(["finetune", *cli_args(data_root, "finetune.epochs=2")]) == 0
    assert main(["scratch", *cli_args(data_root, "finetune.epochs=1")]) == 0
    search = ["tune.n_trials=1", "tune.epochs_min=1", "tune.epochs_max=1", "jobs=1", "tune.study_name=terminal"]
    assert main(["tune", *cli_args(data_root, *search, f"tune.storage=sqlite:///{tmp_path / 'optuna.db'}")]) == 0
    out = capsys.readouterr().out
    # one line per epoch, named; the base config (2 epochs) is outside the space: trial 0 is a new training
    assert _epoch_lines(out) == [("finetune", 1, 2), ("finetune", 2, 2), ("scratch", 1, 1), ("trial 0", 1, 1)]
    assert not re.search(r"^epoch \d+", out, re.M)  # no unnamed epoch line is left
    named = ["finetune epoch 1/2", "finetune epoch 2/2", "scratch epoch 1/1", "trial 0 epoch 1/1"]
    assert [d for d in bars if " epoch " in d] == named
    _check_finetune_charts(mlflow_store, json.loads((data_root / "finetune" / "results.json").read_text())["run_id"])


def _check_finetune_charts(uri: str, run_id: str) -> None:
    """The test figures: one value each at step 0 (a bar), after the curves at optimizer steps (lines)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    run = client.get_run(run_id)
    tests = [k for k in run.data.metrics if k.startswith("test/")]
    assert {"test/token_accuracy", "test/phrase_f1"} <= set(tests)  # the names the runs table and promote read
    assert {m.step for k in tests for m in client.get_metric_history(run_id, k)} == {0}
    assert all(m.step > 0 for m in client.get_metric_history(run_id, "val/phrase_f1"))
    (output,) = run.outputs.model_outputs  # the logged model carries both: its best epoch and its test figures
    linked = {m.key for m in client.get_logged_model(output.model_id).metrics}
    assert {"test/token_accuracy", "val/phrase_f1", "epoch"} <= linked


def test_a_clean_pretrain_run_has_no_corrupt_records_chart(mlflow_store, tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    from albert_exp.cli import main
    from tests.test_pretrain import cfg_from, tiny_config

    d = tiny_config(tmp_path, num_train_steps=4, save_checkpoints_steps=4, eval_input=[])
    _, path = cfg_from(tmp_path, d)
    assert main(["pretrain", "--config", str(path)]) == 0
    results = json.loads((tmp_path / "work" / "pretrain" / "results.json").read_text())
    assert results["corrupt_records"] == 0  # the count stays in the results
    run = MlflowClient(mlflow_store).get_run(results["run_id"])
    assert "train/loss" in run.data.metrics and not any(k.startswith("data/") for k in run.data.metrics)
    assert "pretrain: 100%" in capsys.readouterr().err  # its progress bar names it
