"""Optional extras (albert_exp/extras.py): a stage that needs a missing one stops with one line naming it.

The installed environment has every extra (`make install`); a missing one is simulated by hiding its module
(sys.modules[name] = None makes `import name` raise ImportError)."""

from __future__ import annotations

import re
import sys

import pytest

from albert_exp.errors import UserError
from tests.conftest import ROOT


def _hide(monkeypatch, module: str) -> None:
    monkeypatch.setitem(sys.modules, module, None)


def test_ray_executor_without_ray_names_the_extra(monkeypatch):
    from albert_exp.pretraining_data import ray_session

    _hide(monkeypatch, "ray")
    with pytest.raises(UserError) as e, ray_session(None):
        pass
    assert e.value.fix == "pip install 'albert-exp[ray]'" and "pretraining_data.executor: ray" in e.value.what


def test_convert_without_tensorflow_is_one_line_naming_the_extra(monkeypatch, tmp_path, capsys):
    from albert_exp.cli import main

    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "checkpoint").write_text('model_checkpoint_path: "model.ckpt-1"\n')
    _hide(monkeypatch, "tensorflow")
    assert main(["convert", "tf-to-hf", "--source", str(tmp_path / "ckpt"), "--out", str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "needs the `tf` extra" in err and "pip install 'albert-exp[tf]'" in err


def test_postgres_store_without_psycopg_names_the_extra(monkeypatch):
    import mlflow

    from albert_exp.tracking import store_client

    _hide(monkeypatch, "psycopg")
    mlflow.set_tracking_uri("postgresql://nobody@127.0.0.1:9/none")  # conftest restores the URI after the test
    with pytest.raises(UserError, match=r"PostgreSQL tracking store .* needs the `postgres` extra") as e:
        store_client()
    assert e.value.fix == "pip install 'albert-exp[postgres]'"


def test_postgres_optuna_storage_without_psycopg_names_the_extra(monkeypatch, tmp_path):
    from albert_exp.config import load_config
    from albert_exp.tune import checked_study

    _hide(monkeypatch, "psycopg")
    cfg = load_config(None, ["tune.storage=postgresql://nobody@127.0.0.1:9/none", f"workdir={tmp_path}"])
    with pytest.raises(UserError, match=r"PostgreSQL Optuna storage .* needs the `postgres` extra"):
        checked_study(cfg, "study")


def test_optional_modules_are_imported_only_through_extras_require():
    """The base install runs without them: no module imports Ray, TensorFlow or psycopg at import time."""
    pattern = re.compile(r"^\s*(import|from)\s+(ray|tensorflow|psycopg)\b", re.M)
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "albert_exp").rglob("*.py") if pattern.search(p.read_text())]
    assert offenders == []
